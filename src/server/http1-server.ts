import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Connections } from "./connections.js";
import { type BadHostAnswer, checkingHost } from "./host-header.js";

/**
 * The HTTP/1.1 side of the one port: the Node `http` server Fastify runs on
 * (made by buildApp, never listening itself), given the listener's timeouts,
 * the Host check in front of Fastify's handler, and the hooks that tell the
 * connection registry a request arrived.
 */

export interface Http1Options {
  /** Fastify's request handler, which buildApp registered as the server's request listener. */
  readonly handler: (req: IncomingMessage, res: ServerResponse) => void;
  readonly connections: Connections;
  /** Time for each request's headers (the first one's is the registry's deadline). */
  readonly requestDeadlineMs: number;
  /** Time for each whole request, body included. */
  readonly requestTimeoutMs: number;
  /** A keep-alive connection is closed this long after its last response. */
  readonly idleTimeoutMs: number;
  /** Whether the server is shutting down: responses then close their connection. */
  readonly shuttingDown: () => boolean;
  /** Answers a bad Host in the request's protocol, where it has one. */
  readonly badHost?: BadHostAnswer;
}

export interface Http1Server {
  /** Closes keep-alive connections with no call in flight; during shutdown, each as it goes idle. */
  closeIdle(): void;
  /** Stops the server's connection-checking timer. */
  close(): void;
}

export function adoptHttp1Server(server: Server, options: Http1Options): Http1Server {
  const { connections, requestDeadlineMs, requestTimeoutMs, idleTimeoutMs, shuttingDown } = options;
  const handler = checkingHost(options.handler, options.badHost);
  server.removeListener("request", options.handler);
  if (server.listenerCount("request") !== 0) {
    throw new Error("the HTTP/1.1 server has a request listener other than Fastify's");
  }
  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    connections.find(req.socket)?.requestArrived();
    if (shuttingDown()) res.setHeader("connection", "close");
    // A keep-alive connection goes idle as its last call ends: close it then.
    res.once("close", () => {
      if (shuttingDown()) server.closeIdleConnections();
    });
    handler(req, res);
  });
  server.on("upgrade", (req: IncomingMessage) => connections.find(req.socket)?.requestArrived());

  // Later requests on a keep-alive connection must complete their headers in
  // time too, and every request its body; Node checks both every
  // connectionsCheckingInterval.
  server.headersTimeout = requestDeadlineMs;
  server.requestTimeout = requestTimeoutMs;
  server.keepAliveTimeout = idleTimeoutMs;
  // A constructor option, kept as a property and read when connection
  // tracking starts on "listening" (below).
  Object.assign(server, {
    connectionsCheckingInterval: Math.min(1_000, Math.max(25, Math.floor(requestDeadlineMs / 4))),
  });
  // Node's HTTP/1.1 server starts tracking connections (which enforces
  // headersTimeout and requestTimeout, and lets closeIdleConnections work)
  // on "listening". It never listens itself here, so start that by hand.
  server.emit("listening");

  return {
    closeIdle: () => server.closeIdleConnections(),
    close: () => server.close(() => {}),
  };
}
