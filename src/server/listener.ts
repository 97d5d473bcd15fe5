import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import {
  type AddressInfo,
  BlockList,
  createServer as createNetServer,
  isIP,
  type Server,
  type Socket,
} from "node:net";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import type { AppContext } from "../app-context.js";
import { type BuildOptions, type BuiltApp, buildApp } from "./build-app.js";
import { createConnectionLimits } from "./connection-limits.js";
import { createConnections } from "./connections.js";
import { checkingHost } from "./host-header.js";
import { adoptHttp1Server } from "./http1-server.js";
import { createHttp2Sessions } from "./http2-sessions.js";
import { sniffHttp2 } from "./sniff.js";

export interface RunningServer {
  /** The public port: `http://host:port` or `https://host:port`. */
  readonly url: string;
  readonly port: number;
  /** The internal port (HomeserverService, AdminService, /metrics). */
  readonly internalUrl: string;
  readonly internalPort: number;
  /**
   * Shuts down gracefully: /readyz answers 503 at once while calls are still
   * served for SHUTDOWN_DRAIN (so load balancers notice); then both listeners
   * stop accepting, close idle connections, end open streams with
   * Unavailable, let calls in flight finish for up to SHUTDOWN_GRACE, and
   * close what is left. The AppContext (and its database) is the caller's to
   * close afterwards.
   */
  close(): Promise<void>;
}

export interface ServerOptions {
  /**
   * Client addresses MAX_CONNECTIONS_PER_ADDRESS does not apply to on the
   * public port. Default: the addresses in TRUSTED_PROXIES (behind a reverse
   * proxy every connection comes from it).
   */
  readonly exemptFromAddressLimit?: (address: string) => boolean;
  /** How StreamSteps is served (see {@link BuildOptions}); tests run both. */
  readonly streamSteps?: BuildOptions["streamSteps"];
}

/** One listening socket serving one app. */
interface Listener {
  readonly url: string;
  readonly port: number;
  /** Stops accepting, ends streams, closes idle connections; resolves when all are gone. */
  close(): Promise<void>;
}

/**
 * Serves the public app and the internal app, each on its own port.
 * Cleartext: each connection is sniffed for the HTTP/2 preface (gRPC, and
 * Connect with prior knowledge) and otherwise handed to HTTP/1.1 (browsers,
 * gRPC-Web, Connect, hRPC). With TLS, ALPN chooses between h2 and http/1.1.
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
  const draining = new AbortController();
  const exempt = options.exemptFromAddressLimit ?? trustedProxyMatcher(config.trustedProxies);
  const [publicApp, internalApp] = await Promise.all([
    buildApp(
      ctx,
      "public",
      draining.signal,
      options.streamSteps ? { streamSteps: options.streamSteps } : {},
    ),
    buildApp(ctx, "internal", draining.signal),
  ]);
  const publicListener = await listen(ctx, publicApp, config.host, config.port, "public", exempt);
  let internalListener: Listener;
  try {
    internalListener = await listen(
      ctx,
      internalApp,
      config.internal.host,
      config.internal.port,
      "internal",
      undefined,
    );
  } catch (err) {
    await publicListener.close();
    throw err;
  }
  logger.info(
    { url: publicListener.url, internalUrl: internalListener.url, database: ctx.db.kind },
    `cadenza listening on ${publicListener.url} (internal ${internalListener.url})`,
  );

  let closing: Promise<void> | undefined;
  return {
    url: publicListener.url,
    port: publicListener.port,
    internalUrl: internalListener.url,
    internalPort: internalListener.port,
    close() {
      closing ??= (async () => {
        draining.abort();
        if (config.shutdownDrainMs > 0) {
          logger.info({ drainMs: config.shutdownDrainMs }, "draining: /readyz answers 503");
          await new Promise((resolve) => setTimeout(resolve, config.shutdownDrainMs));
        }
        await Promise.all([publicListener.close(), internalListener.close()]);
      })();
      return closing;
    },
  };
}

/** Whether an address is one of TRUSTED_PROXIES. */
function trustedProxyMatcher(cidrs: readonly string[]): (address: string) => boolean {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [net = "", bits = ""] = cidr.split("/");
    list.addSubnet(net, Number(bits), isIP(net) === 6 ? "ipv6" : "ipv4");
  }
  return (address) => {
    const family = isIP(address);
    return family !== 0 && list.check(address, family === 6 ? "ipv6" : "ipv4");
  };
}

/** Serves one app on host:port, for every protocol. */
async function listen(
  ctx: AppContext,
  built: BuiltApp,
  host: string,
  port: number,
  label: "public" | "internal",
  exempt: ((address: string) => boolean) | undefined,
): Promise<Listener> {
  const { config, logger } = ctx;
  const limits = config.connections;
  let shuttingDown = false;
  const connections = createConnections({ requestDeadlineMs: limits.requestDeadlineMs, logger });
  const admission = createConnectionLimits({
    maxConnections: limits.maxConnections,
    maxPerAddress: limits.maxConnectionsPerAddress,
    ...(exempt ? { exempt } : {}),
    logger,
  });
  const http1 = adoptHttp1Server(built.http1, {
    handler: built.handler as (req: IncomingMessage, res: ServerResponse) => void,
    connections,
    requestDeadlineMs: limits.requestDeadlineMs,
    requestTimeoutMs: limits.requestTimeoutMs,
    idleTimeoutMs: limits.idleTimeoutMs,
    shuttingDown: () => shuttingDown,
    badHost: built.answerBadHost,
  });
  const http2 = createHttp2Sessions({
    // Fastify's handler serves HTTP/2 compatibility-API requests as it does in
    // its own `http2` mode; only its type is HTTP/1.1-specific.
    handler: checkingHost(
      built.handler as unknown as (req: Http2ServerRequest, res: Http2ServerResponse) => void,
      built.answerBadHost,
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
    listener.listen(port, host, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  // Failing to accept one connection (out of files, say) must not stop the server.
  listener.on("error", (err) => logger.error({ err }, "accepting a connection failed"));
  const bound = (listener.address() as AddressInfo).port;
  const shownHost = host.includes(":") ? `[${host}]` : host;
  const url = `${config.tls ? "https" : "http"}://${shownHost}:${bound}`;
  logger.debug({ url, listener: label }, `${label} listener ready`);

  let closing: Promise<void> | undefined;
  return {
    url,
    port: bound,
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
