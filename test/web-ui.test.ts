import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { contentSecurityPolicy, defaultWebUiDir } from "../src/server/web-ui.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";

/**
 * How cadenza serves the web client (src/server/web-ui.ts): exactly the built
 * files, with their types, cache headers and the Content-Security-Policy;
 * nothing at `/` with WEB_UI=off; and every other path answered as before.
 * The page itself runs in test/web-browser.test.ts.
 */

const built = mkdtempSync(join(tmpdir(), "cadenza-web-"));
mkdirSync(join(built, "assets"));
const indexHtml = '<!doctype html><title>t</title><main id="app"></main>';
writeFileSync(join(built, "index.html"), indexHtml);
writeFileSync(join(built, "assets", "index-abc123.js"), "console.log(1);\n");
writeFileSync(join(built, "assets", "index-abc123.css"), "main{}\n");
writeFileSync(join(built, "favicon.svg"), "<svg xmlns='http://www.w3.org/2000/svg'/>");
writeFileSync(join(built, "notes.exe"), "not a web file");
const unbuilt = mkdtempSync(join(tmpdir(), "cadenza-web-empty-"));

let database: TestDatabase;
const contexts: AppContext[] = [];
const servers: RunningServer[] = [];
let on: RunningServer;
let off: RunningServer;
let notBuilt: RunningServer;

async function serve(env: Record<string, string>, webUiDir: string) {
  const ctx = await createAppContext(testConfig(env), {
    db: database.db,
    hasher: fastHasher,
    logger: pino({ level: "silent" }),
    background: false,
    webUiDir,
  });
  contexts.push(ctx);
  const server = await startServer(ctx);
  servers.push(server);
  return server;
}

beforeAll(async () => {
  database = await pglite.open();
  on = await serve({}, built);
  off = await serve({ WEB_UI: "off" }, built);
  notBuilt = await serve({ WEB_UI: "on" }, unbuilt);
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  for (const ctx of contexts) await ctx.close();
  await database?.close();
});

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One raw HTTP/1.1 request, the path sent exactly as given (fetch would normalise `..`). */
function send(
  base: string,
  path: string,
  options: { method?: string; headers?: Record<string, string>; body?: string | undefined } = {},
): Promise<Answer> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        path,
        method: options.method ?? "GET",
        agent: false,

        headers: options.headers,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          }),
        );
      },
    );
    req.on("error", reject);
    req.end(options.body);
  });
}

describe("WEB_UI=on", () => {
  it("serves index.html at / with the Content-Security-Policy and security headers", async () => {
    const res = await send(on.url, "/");
    expect(res.status).toBe(200);
    expect(res.body).toBe(indexHtml);
    expect(res.headers).toMatchObject({
      "content-type": "text/html; charset=utf-8",
      "cache-control": "no-cache",
      "content-security-policy": contentSecurityPolicy(),
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "x-frame-options": "DENY",
    });
    expect(res.headers.etag).toMatch(/^"[\w-]{22}"$/);
    expect((await send(on.url, "/index.html")).body).toBe(indexHtml);
  });

  it("sends a policy that allows nothing inline and calls to its own origin only", () => {
    const csp = contentSecurityPolicy();
    const directives = new Map(
      csp.split("; ").map((d) => [d.split(" ")[0], d.split(" ").slice(1).join(" ")]),
    );
    expect(Object.fromEntries(directives)).toEqual({
      "default-src": "'self'",
      "script-src": "'self'",
      "style-src": "'self'",
      "img-src": "'self'",
      "font-src": "'self'",
      "connect-src": "'self'",
      "object-src": "'none'",
      "base-uri": "'none'",
      "form-action": "'none'",
      "frame-ancestors": "'none'",
      "require-trusted-types-for": "'script'",
      "trusted-types": "'none'",
    });
    expect(csp).not.toMatch(/unsafe|\*|data:|http:/);
    expect(contentSecurityPolicy(["http://127.0.0.1:2289"])).toContain(
      "connect-src http://127.0.0.1:2289;",
    );
  });

  it.each([
    [
      "/assets/index-abc123.js",
      "text/javascript; charset=utf-8",
      "public, max-age=31536000, immutable",
    ],
    ["/assets/index-abc123.css", "text/css; charset=utf-8", "public, max-age=31536000, immutable"],
    ["/favicon.svg", "image/svg+xml", "no-cache"],
  ])("serves %s as %s, cached as %s", async (path, type, cache) => {
    const res = await send(on.url, path);
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe(type);
    expect(res.headers["cache-control"]).toBe(cache);
    expect(res.headers["x-content-type-options"]).toBe("nosniff");
  });

  it("answers 304 to a matching If-None-Match, and HEAD without a body", async () => {
    const { headers } = await send(on.url, "/");
    const etag = String(headers.etag);
    expect((await send(on.url, "/", { headers: { "if-none-match": etag } })).status).toBe(304);
    expect(
      (await send(on.url, "/", { headers: { "if-none-match": `"other", ${etag}` } })).status,
    ).toBe(304);
    expect((await send(on.url, "/", { headers: { "if-none-match": '"other"' } })).status).toBe(200);
    const head = await send(on.url, "/", { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.body).toBe("");
    expect(head.headers["content-type"]).toBe("text/html; charset=utf-8");
  });

  it.each([
    "/notes.exe",
    "/assets/",
    "/assets/../index.html",
    "/%2e%2e/package.json",
    "/../package.json",
    "/index.html/",
    "/Index.html",
  ])("serves no other path: %s", async (path) => {
    const res = await send(on.url, path);
    expect(res.status).toBe(404);
    expect(res.headers["content-security-policy"]).toBeUndefined();
  });
});

describe("WEB_UI=off", () => {
  it.each(["/", "/index.html", "/assets/index-abc123.js"])("serves nothing at %s", async (path) => {
    const res = await send(off.url, path);
    expect(res.status).toBe(404);
    expect(res.body).not.toContain("<main");
  });
});

describe("WEB_UI=on without a built page", () => {
  it("says so at / with 503, and serves nothing else", async () => {
    const res = await send(notBuilt.url, "/");
    expect(res.status).toBe(503);
    expect(res.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(res.body).toContain("npm run build");
    expect((await send(notBuilt.url, "/index.html")).status).toBe(404);
  });
});

describe("everything else is answered as without the page", () => {
  const B = "/protocol.auth.v1.AuthService/BeginAuth";
  it.each([
    ["POST", B, { "content-type": "application/json" }, "{}"],
    ["POST", B, { "content-type": "application/hrpc" }, ""],
    ["GET", B, {}, undefined],
    ["POST", "/", { "content-type": "application/json" }, "{}"],
    ["POST", "/", { "content-type": "application/grpc-web+proto" }, ""],
    ["POST", "/index.html", { "content-type": "application/hrpc" }, ""],
    ["GET", "/healthz", {}, undefined],
    ["GET", "/nothing-here", {}, undefined],
  ] as const)("%s %s (%o)", async (method, path, headers, body) => {
    const [withPage, without] = await Promise.all(
      [on, off].map((s) => send(s.url, path, { method, headers: { ...headers }, body })),
    );
    const strip = (a: Answer | undefined) => ({
      status: a?.status,
      type: a?.headers["content-type"],
      // auth_ids differ per call: a new flow's answer is compared by its length.
      body: a?.status === 200 && path === B ? `${a.body.length} bytes` : a?.body,
    });
    expect(strip(withPage)).toEqual(strip(without));
    if (path === B && method === "POST" && headers["content-type"] === "application/json") {
      expect(withPage?.status).toBe(200);
    }
  });
});

it("reads the page from dist/web, whether cadenza runs from src/ or dist/", () => {
  expect(defaultWebUiDir).toBe(fileURLToPath(new URL("../dist/web/", import.meta.url)));
});
