import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { createServer, connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";

/** The transports a client can use to reach cadenza, each a real client on loopback. */
export type ProtocolName =
  | "connect-json/http1"
  | "connect-binary/http2"
  | "grpc-web/http1"
  | "grpc/http2";

export const protocols: readonly ProtocolName[] = [
  "connect-json/http1",
  "connect-binary/http2",
  "grpc-web/http1",
  "grpc/http2",
];

/**
 * Makes a transport for `protocol` to `baseUrl`. HTTP/2 sessions go through
 * managers the caller must abort (`closeAll`), or the test run hangs.
 * `localAddress` (cleartext only) is the loopback address to connect from, so
 * a proxy's X-Forwarded-For can be told apart from the proxy's own address.
 */
export function transportFactory(options: { ca?: Buffer; localAddress?: string } = {}) {
  const managers: Http2SessionManager[] = [];
  const { localAddress } = options;
  if (options.ca && localAddress !== undefined) {
    throw new Error("transportFactory: localAddress is for cleartext connections only");
  }
  const tls = options.ca ? { ca: options.ca } : {};
  const http1Options = localAddress === undefined ? tls : { localAddress };
  const http2Options =
    localAddress === undefined
      ? tls
      : {
          createConnection: (authority: URL) =>
            netConnect({ host: authority.hostname, port: Number(authority.port), localAddress }),
        };
  const h2 = (baseUrl: string) => {
    const manager = new Http2SessionManager(baseUrl, undefined, http2Options);
    managers.push(manager);
    return manager;
  };
  return {
    create(protocol: ProtocolName, baseUrl: string): Transport {
      switch (protocol) {
        case "connect-json/http1":
          return createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: http1Options });
        case "connect-binary/http2":
          return createConnectTransport({
            baseUrl,
            httpVersion: "2",
            useBinaryFormat: true,
            sessionManager: h2(baseUrl),
          });
        case "grpc-web/http1":
          return createGrpcWebTransport({
            baseUrl,
            httpVersion: "1.1",
            nodeOptions: http1Options,
          });
        case "grpc/http2":
          return createGrpcTransport({ baseUrl, sessionManager: h2(baseUrl) });
      }
    },
    closeAll() {
      for (const m of managers) m.abort();
    },
  };
}

/** A self-signed certificate for localhost and 127.0.0.1, made with openssl. */
export function selfSignedCertificate(): { certFile: string; keyFile: string; cert: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), "cadenza-tls-"));
  const certFile = join(dir, "cert.pem");
  const keyFile = join(dir, "key.pem");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    { stdio: "ignore" },
  );
  return { certFile, keyFile, cert: readFileSync(certFile) };
}

/**
 * A port free on 127.0.0.1 right now, where nothing may listen (a refused
 * connection); for something that must be told its port before it listens,
 * {@link onFreePort}.
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * The two ways StreamSteps is served (src/server/build-app.ts): directly,
 * under the interceptors' rules, and through Connect's handler. Protocol
 * suites run on both, so that the two cannot drift apart.
 */
export const stepStreamPaths = ["direct", "pipeline"] as const;
export type StepStreamPath = (typeof stepStreamPaths)[number];

/** Whether `err` says a port was taken: Node's EADDRINUSE, or a child's report of it. */
function portTaken(err: unknown): boolean {
  if ((err as NodeJS.ErrnoException | undefined)?.code === "EADDRINUSE") return true;
  return /EADDRINUSE|address already in use/i.test(String((err as Error | undefined)?.message));
}

/**
 * Starts something that must be told its port before it listens (a
 * SERVER_ID names it; Caddy's and PgBouncer's configs give it), on a port
 * that was free a moment ago, and on another if something took that one in
 * between. `start` must clean up after itself when it fails.
 */
export async function onFreePort<T>(start: (port: number) => Promise<T>, attempts = 5): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start(await freePort());
    } catch (err) {
      if (attempt >= attempts || !portTaken(err)) throw err;
    }
  }
}
