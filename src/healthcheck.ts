/**
 * The image's health check (`HEALTHCHECK CMD ["node", "dist/healthcheck.js"]`):
 * `GET /readyz` on the internal port at 127.0.0.1, inside the container, over
 * TLS when `TLS_CERT` is set (the internal port then serves TLS like the public
 * one) and cleartext HTTP/1.1 otherwise. Exits 0 on 200 and 1 on anything else
 * (503, no answer within 3 s, refused, bad configuration), with one line saying
 * which, for `docker inspect`. `/readyz` needs no `INTERNAL_TOKEN`.
 *
 * The configuration comes from `loadConfig`, so the port and TLS mode are read
 * exactly as the server reads them. The internal listener must accept
 * connections on 127.0.0.1: `INTERNAL_HOST` loopback (the default), `0.0.0.0` or `::`.
 */
import { type ClientRequest, request as httpRequest, type IncomingMessage } from "node:http";
import { type RequestOptions as HttpsOptions, request as httpsRequest } from "node:https";
import type { ConnectionOptions } from "node:tls";
import { ConfigError, loadConfig } from "./config.js";

/** The whole check, connection and answer, within Docker's `--timeout` (5 s in the Dockerfile). */
const TIMEOUT_MS = 3000;
/** Enough of the body for the report (`{"status":"database unreachable"}`). */
const MAX_BODY = 512;

function finish(code: 0 | 1, line: string): never {
  (code === 0 ? process.stdout : process.stderr).write(`${line}\n`);
  process.exit(code);
}

function check(): void {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) finish(1, `healthcheck: ${err.message}`);
    throw err;
  }
  const tls = config.tls !== undefined;
  const target = `${tls ? "https" : "http"}://127.0.0.1:${config.internal.port}/readyz`;
  const common = {
    host: "127.0.0.1",
    port: config.internal.port,
    path: "/readyz",
    method: "GET",
    agent: false,
    signal: AbortSignal.timeout(TIMEOUT_MS),
  } as const;
  const onResponse = (res: IncomingMessage): void => {
    let body = "";
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => {
      if (body.length < MAX_BODY) body += chunk.slice(0, MAX_BODY - body.length);
    });
    res.on("end", () => {
      const line = `${target}: ${res.statusCode} ${body.trim()}`;
      finish(res.statusCode === 200 ? 0 : 1, line);
    });
  };
  // https.request hands ALPNProtocols on to tls.connect; only its options type leaves it out.
  const tlsOptions: HttpsOptions & Pick<ConnectionOptions, "ALPNProtocols"> = {
    ...common,
    // Not verified, on purpose: the certificate names the homeserver's public host, not
    // 127.0.0.1, and may chain to a CA this container does not carry, so verifying it here
    // would fail for a correct setup. This connection never leaves the container's own
    // loopback, sends no credential and reads only a status code, so there is nothing for
    // verification to protect.
    rejectUnauthorized: false,
    ALPNProtocols: ["http/1.1"],
  };
  const req: ClientRequest = tls
    ? httpsRequest(tlsOptions, onResponse)
    : httpRequest(common, onResponse);
  req.on("error", (err: Error) => {
    const why = err.name === "AbortError" ? `no answer within ${TIMEOUT_MS} ms` : err.message;
    finish(1, `${target}: ${why}`);
  });
  req.end();
}

check();
