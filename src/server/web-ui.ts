import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { extname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";

/**
 * The reference web client (web/), served at `/` on the public port when
 * WEB_UI=on. The files `npm run build` put in dist/web are read once at
 * start-up into memory, so a request can only ever get one of them: there is
 * no path to resolve, hence no traversal, and nothing else on the disk is
 * reachable.
 */

/** Where `npm run build` puts the page: `dist/web`, whether this runs from dist/ or src/. */
export const defaultWebUiDir = fileURLToPath(new URL("../../dist/web/", import.meta.url));

/** One built file, ready to send. */
export interface WebFile {
  readonly body: Buffer;
  readonly contentType: string;
  readonly etag: string;
  readonly cacheControl: string;
}

/** The built page: every file by the URL path it is served at (`/` is index.html). */
export interface WebUi {
  readonly dir: string;
  readonly files: ReadonlyMap<string, WebFile>;
}

const contentTypes: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".webmanifest": "application/manifest+json",
  ".txt": "text/plain; charset=utf-8",
  ".woff2": "font/woff2",
};

/** Vite names what it emits under assets/ by content hash: such a file never changes. */
const immutable = "public, max-age=31536000, immutable";
/** Everything else (index.html above all) is revalidated by ETag on every load. */
const revalidate = "no-cache";

async function filesUnder(dir: string, depth = 0): Promise<string[]> {
  if (depth > 4) return [];
  const entries = await readdir(dir, { withFileTypes: true });
  const nested = await Promise.all(
    entries.map(async (e) => {
      const path = join(dir, e.name);
      if (e.isDirectory()) return filesUnder(path, depth + 1);
      return e.isFile() ? [path] : [];
    }),
  );
  return nested.flat();
}

/**
 * Reads the built page from `dir`. A missing folder, or one without
 * index.html, gives no files (the page was not built); files of a type not in
 * the table above are not served.
 */
export async function loadWebUi(dir: string = defaultWebUiDir): Promise<WebUi> {
  let paths: string[];
  try {
    paths = await filesUnder(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { dir, files: new Map() };
    throw err;
  }
  const files = new Map<string, WebFile>();
  for (const path of paths.sort()) {
    const contentType = contentTypes[extname(path).toLowerCase()];
    if (contentType === undefined) continue;
    const urlPath = `/${relative(dir, path).split(sep).join("/")}`;
    const body = await readFile(path);
    const etag = `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`;
    const cacheControl = urlPath.startsWith("/assets/") ? immutable : revalidate;
    files.set(urlPath, { body, contentType, etag, cacheControl });
  }
  const index = files.get("/index.html");
  if (!index) return { dir, files: new Map() };
  files.set("/", index);
  return { dir, files };
}

/**
 * The Content-Security-Policy the page is sent with: its own scripts and
 * styles only (nothing inline, no eval), no plugins, frames or `<base>`, no
 * form ever submitted natively (the page's code sends every form), DOM
 * injection sinks closed by Trusted Types, and calls only to `connectSrc`
 * (cadenza's own origin: so a link with `?server=` cannot send what a user
 * types to another server). Whoever hosts a copy of the page elsewhere lists
 * the cadenza origin it talks to instead.
 */
export function contentSecurityPolicy(connectSrc: readonly string[] = ["'self'"]): string {
  return [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    `connect-src ${connectSrc.join(" ")}`,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
  ].join("; ");
}

/** Headers every file of the page is sent with. */
export function webUiHeaders(connectSrc?: readonly string[]): Readonly<Record<string, string>> {
  return {
    "content-security-policy": contentSecurityPolicy(connectSrc),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
  };
}

/** Whether an If-None-Match header names `etag` (a list, or `*`). */
function notModified(ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false;
  return ifNoneMatch.split(",").some((tag) => {
    const t = tag.trim();
    return t === "*" || t === etag || t === `W/${etag}`;
  });
}

/**
 * `GET` (and `HEAD`) routes for exactly the files of `webUi`. When the page
 * was not built, `/` answers 503 saying so: WEB_UI=on promised a page there.
 */
export function webUiRoutes(webUi: WebUi): FastifyPluginAsync {
  const headers = webUiHeaders();
  return async (app) => {
    if (webUi.files.size === 0) {
      app.get("/", async (_request, reply) =>
        reply
          .code(503)
          .header("content-type", "text/plain; charset=utf-8")
          .header("cache-control", "no-store")
          .send(
            `The web client is not built (no index.html in ${webUi.dir}): run npm run build, or set WEB_UI=off.\n`,
          ),
      );
      return;
    }
    for (const [path, file] of webUi.files) {
      app.get(path, async (request: FastifyRequest, reply: FastifyReply) => {
        reply.headers(headers).header("etag", file.etag).header("cache-control", file.cacheControl);
        if (notModified(request.headers["if-none-match"], file.etag)) {
          return reply.code(304).send();
        }
        return reply.header("content-type", file.contentType).send(file.body);
      });
    }
  };
}
