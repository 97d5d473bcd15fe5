import { readFile } from "node:fs/promises";
import {
  createServer as createHttp2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
} from "node:http2";
import {
  type AddressInfo,
  createServer as createNetServer,
  type Server,
  type Socket,
} from "node:net";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import type { AppContext } from "../app-context.js";
import { buildApp } from "./build-app.js";

/** The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4). */
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface RunningServer {
  /** `http://host:port` or `https://host:port`. */
  readonly url: string;
  readonly port: number;
  /**
   * Stops accepting connections, ends open streams with Unavailable, lets calls
   * in flight finish for up to SHUTDOWN_GRACE, then closes what is left.
   * The AppContext (and its database) is the caller's to close afterwards.
   */
  close(): Promise<void>;
}

/**
 * Serves the app on one port for every protocol. Cleartext: each connection
 * is sniffed for the HTTP/2 preface (gRPC, and Connect with prior knowledge)
 * and otherwise handed to HTTP/1.1 (browsers, gRPC-Web, Connect). With TLS,
 * ALPN chooses between h2 and http/1.1. Both servers share Fastify's handler.
 */
export async function startServer(ctx: AppContext): Promise<RunningServer> {
  const { config, logger } = ctx;
  const built = await buildApp(ctx);
  const { http1 } = built;
  // Node's HTTP/1.1 server starts tracking connections (which enforces
  // headersTimeout and requestTimeout, and lets closeIdleConnections work)
  // on "listening". It never listens itself here, so start that by hand.
  http1.emit("listening");
  // Fastify's handler serves HTTP/2 compatibility-API requests as it does in
  // its own `http2` mode; only its type is HTTP/1.1-specific.
  const http2 = createHttp2Server(
    {},
    built.handler as unknown as (req: Http2ServerRequest, res: Http2ServerResponse) => void,
  );
  const sessions = new Set<Http2Session>();
  http2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  const sockets = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };

  let listener: Server;
  if (config.tls) {
    const [cert, key] = await Promise.all([
      readFile(config.tls.certFile),
      readFile(config.tls.keyFile),
    ]);
    listener = createTlsServer(
      { cert, key, ALPNProtocols: ["h2", "http/1.1"], handshakeTimeout: 10_000 },
      (socket: TLSSocket) => {
        track(socket);
        (socket.alpnProtocol === "h2" ? http2 : http1).emit("connection", socket);
      },
    );
  } else {
    listener = createNetServer((socket) => {
      track(socket);
      sniff(socket, (isHttp2) => (isHttp2 ? http2 : http1).emit("connection", socket));
    });
  }

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(config.port, config.host, () => {
      listener.off("error", reject);
      resolve();
    });
  });
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
        const stopped = new Promise<void>((resolve) => listener.close(() => resolve()));
        built.beginShutdown();
        http1.closeIdleConnections();
        for (const session of sessions) session.close();
        const drained = new Promise<void>((resolve) => {
          const check = (): void => {
            // Connections go idle as their last call ends; close each then.
            http1.closeIdleConnections();
            if (sockets.size === 0) resolve();
            else setTimeout(check, 20).unref();
          };
          check();
        });
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          drained,
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, config.shutdownGraceMs);
          }),
        ]);
        clearTimeout(timer);
        for (const socket of sockets) socket.destroy();
        // Stops the HTTP/1.1 server's connection-checking timer.
        http1.close(() => {});
        await stopped;
        await built.app.close();
      })();
      return closing;
    },
  };
}

/**
 * Reads just enough of a new connection to tell HTTP/2 prior knowledge from
 * HTTP/1.1, puts the bytes back, and hands the socket on.
 */
function sniff(socket: Socket, handOff: (isHttp2: boolean) => void): void {
  let seen = Buffer.alloc(0);
  const onData = (chunk: Buffer): void => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, HTTP2_PREFACE.length);
    const matches = seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
    if (matches && n < HTTP2_PREFACE.length) return; // could still be HTTP/2: read more
    socket.off("data", onData);
    socket.pause();
    socket.unshift(seen);
    handOff(matches);
    process.nextTick(() => socket.resume());
  };
  socket.on("data", onData);
  // A client that connects and says nothing is dropped.
  socket.setTimeout(10_000, () => {
    if (seen.length < HTTP2_PREFACE.length) socket.destroy();
  });
  socket.once("data", () => socket.setTimeout(0));
}
