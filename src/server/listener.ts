import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import {
  type AddressInfo,
  createServer as createNetServer,
  type Server,
  type Socket,
} from "node:net";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import type { AppContext } from "../app-context.js";
import { buildApp } from "./build-app.js";
import { createConnectionLimits } from "./connection-limits.js";
import { createConnections } from "./connections.js";
import { checkingHost } from "./host-header.js";
import { adoptHttp1Server } from "./http1-server.js";
import { createHttp2Sessions } from "./http2-sessions.js";
import { sniffHttp2 } from "./sniff.js";

export interface RunningServer {
  /** `http://host:port` or `https://host:port`. */
  readonly url: string;
  readonly port: number;
  /**
   * Stops accepting connections, closes idle ones at once, ends open streams
   * with Unavailable, lets calls in flight finish for up to SHUTDOWN_GRACE,
   * then closes what is left. The AppContext (and its database) is the
   * caller's to close afterwards.
   */
  close(): Promise<void>;
}

export interface ServerOptions {
  /**
   * Client addresses MAX_CONNECTIONS_PER_ADDRESS does not apply to, such as
   * trusted reverse proxies. Default: none.
   */
  readonly exemptFromAddressLimit?: (address: string) => boolean;
}

/**
 * Serves the app on one port for every protocol. Cleartext: each connection
 * is sniffed for the HTTP/2 preface (gRPC, and Connect with prior knowledge)
 * and otherwise handed to HTTP/1.1 (browsers, gRPC-Web, Connect, hRPC). With
 * TLS, ALPN chooses between h2 and http/1.1. Both servers share Fastify's
 * handler, behind a check of the Host header.
 *
 * Every connection must complete its first request within REQUEST_DEADLINE
 * and is closed after IDLE_TIMEOUT without one in progress; connections over
 * MAX_CONNECTIONS or MAX_CONNECTIONS_PER_ADDRESS are closed as they arrive.
 */
export async function startServer(
  ctx: AppContext,
  options: ServerOptions = {},
): Promise<RunningServer> {
  const { config, logger } = ctx;
  const limits = config.connections;
  const built = await buildApp(ctx);
  let shuttingDown = false;

  const connections = createConnections({ requestDeadlineMs: limits.requestDeadlineMs, logger });
  const admission = createConnectionLimits({
    maxConnections: limits.maxConnections,
    maxPerAddress: limits.maxConnectionsPerAddress,
    ...(options.exemptFromAddressLimit ? { exempt: options.exemptFromAddressLimit } : {}),
    logger,
  });
  const http1 = adoptHttp1Server(built.http1, {
    handler: built.handler as (req: IncomingMessage, res: ServerResponse) => void,
    connections,
    requestDeadlineMs: limits.requestDeadlineMs,
    requestTimeoutMs: limits.requestTimeoutMs,
    idleTimeoutMs: limits.idleTimeoutMs,
    shuttingDown: () => shuttingDown,
  });
  const http2 = createHttp2Sessions({
    // Fastify's handler serves HTTP/2 compatibility-API requests as it does in
    // its own `http2` mode; only its type is HTTP/1.1-specific.
    handler: checkingHost(
      built.handler as unknown as (req: Http2ServerRequest, res: Http2ServerResponse) => void,
    ),
    maxConcurrentStreams: limits.http2MaxConcurrentStreams,
    readMaxBytes: config.readMaxBytes,
    requestTimeoutMs: limits.requestTimeoutMs,
    idleTimeoutMs: limits.idleTimeoutMs,
    logger,
  });

  /** Admits an accepted TCP connection, or closes it at once over a limit. */
  const accept = (raw: Socket): boolean => {
    if (shuttingDown || !admission.admit(raw)) {
      raw.destroy();
      return false;
    }
    connections.accept(raw);
    return true;
  };
  /** Hands an accepted (and, with TLS, decrypted) connection to HTTP/2 or HTTP/1.1. */
  const handOff = (raw: Socket, socket: Socket | TLSSocket, isHttp2: boolean): void => {
    const conn = connections.find(raw);
    if (!conn || raw.destroyed) return;
    if (isHttp2) conn.setClose(http2.serve(socket, () => conn.requestArrived()));
    else built.http1.emit("connection", socket);
  };

  let listener: Server;
  if (config.tls) {
    const [cert, key] = await Promise.all([
      readFile(config.tls.certFile),
      readFile(config.tls.keyFile),
    ]);
    listener = createTlsServer(
      {
        cert,
        key,
        ALPNProtocols: ["h2", "http/1.1"],
        handshakeTimeout: limits.requestDeadlineMs,
      },
      (socket: TLSSocket) => {
        const raw = connections.find(socket)?.socket;
        if (raw) handOff(raw, socket, socket.alpnProtocol === "h2");
        else socket.destroy();
      },
    );
    listener.on("connection", (raw: Socket) => void accept(raw));
    // A failed handshake (the deadline included) closes its socket; nothing to report.
    listener.on("tlsClientError", (err) => logger.debug({ err }, "TLS handshake failed"));
  } else {
    listener = createNetServer((raw) => {
      if (accept(raw)) sniffHttp2(raw, (isHttp2) => handOff(raw, raw, isHttp2));
    });
  }
  admission.guard(listener);

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(config.port, config.host, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  // Failing to accept one connection (out of files, say) must not stop the server.
  listener.on("error", (err) => logger.error({ err }, "accepting a connection failed"));
  const { port } = listener.address() as AddressInfo;
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  const url = `${config.tls ? "https" : "http"}://${host}:${port}`;
  logger.info({ url, database: ctx.db.kind }, `cadenza listening on ${url}`);

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    close() {
      closing ??= (async () => {
        shuttingDown = true;
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()));
        built.beginShutdown();
        // Idle connections go now: those that never sent a request, idle
        // keep-alive ones, and HTTP/2 sessions without streams (GOAWAY).
        connections.closeOpening();
        http1.closeIdle();
        http2.closeAll();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          connections.drained(),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, config.shutdownGraceMs);
          }),
        ]);
        clearTimeout(timer);
        connections.destroyAll();
        http1.close();
        await stopped;
        await built.app.close();
      })();
      return closing;
    },
  };
}
