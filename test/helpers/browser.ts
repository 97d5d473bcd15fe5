import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type BrowserContext, chromium } from "playwright-core";
import { loadWebUi } from "../../src/server/web-ui.js";

/**
 * Debian's Chromium, driven by playwright-core. Nothing is ever downloaded:
 * the browser is the system's (`.ci/run` installs Debian's package when it is
 * missing), found at CHROMIUM_PATH or /usr/bin/chromium.
 */
export const chromiumPath = process.env.CHROMIUM_PATH?.trim() || "/usr/bin/chromium";

/** Why the browser tests cannot run here, or undefined when they can. */
export function chromiumMissing(): string | undefined {
  return existsSync(chromiumPath)
    ? undefined
    : `no Chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM_PATH)`;
}

/**
 * Headless Chromium with a fresh profile, quiet: no component updates, sync,
 * background requests or QUIC, so every request it makes is one the page
 * made (and can be checked to go to loopback only).
 */
export async function launchChromium(): Promise<{
  context: BrowserContext;
  close(): Promise<void>;
}> {
  const profile = mkdtempSync(join(tmpdir(), "cadenza-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
    viewport: { width: 960, height: 720 },
    locale: "en-GB",
    timezoneId: "UTC",
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Builds the web client (web/, with its own Vite config) into `outDir`. */
export async function buildWebClient(outDir: string): Promise<void> {
  const { build } = await import("vite");
  await build({
    configFile: fileURLToPath(new URL("../../web/vite.config.ts", import.meta.url)),
    logLevel: "silent",
    build: { outDir, emptyOutDir: true },
  });
}

/** A request a {@link startStaticServer} saw. */
export interface SeenRequest {
  readonly method: string;
  readonly path: string;
}

/**
 * A second origin for the page: a plain static server on loopback (port 0)
 * serving the built files, as an operator hosting a copy of the page would,
 * with the headers `headers()` gives (its own CSP, naming cadenza's origin).
 * It answers nothing else, and records every request.
 */
export async function startStaticServer(dir: string, headers: () => Record<string, string>) {
  const { files } = await loadWebUi(dir);
  const seen: SeenRequest[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? "/").split("?", 1)[0] ?? "/";
    seen.push({ method: req.method ?? "", path });
    const file = req.method === "GET" ? files.get(path) : undefined;
    if (!file) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, { ...headers(), "content-type": file.contentType }).end(file.body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
