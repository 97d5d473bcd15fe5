import {
  createServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
} from "node:http2";
import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Logger } from "pino";

/**
 * The HTTP/2 side of the one port: a Node `http2` server that never listens
 * itself (the listener hands it sockets), with the limits every session gets:
 * a cap on concurrent streams, flow-control windows sized to one message,
 * and GOAWAY after an idle spell.
 */

export interface Http2SessionsOptions {
  /** The request handler shared with HTTP/1.1 (Fastify's, through the compatibility API). */
  readonly handler: (req: Http2ServerRequest, res: Http2ServerResponse) => void;
  readonly maxConcurrentStreams: number;
  /** READ_MAX_BYTES: each stream's receive window holds one whole message and its 5-byte envelope prefix. */
  readonly readMaxBytes: number;
  /** A session with no open stream for this long gets GOAWAY and is closed. */
  readonly idleTimeoutMs: number;
  readonly logger: Logger;
}

export interface Http2Sessions {
  /**
   * Hands a connection (after the preface sniff, or TLS with ALPN h2) to the
   * HTTP/2 server. `firstStream` is called when its first stream opens.
   * Returns how to end the session gracefully.
   */
  serve(socket: Socket | TLSSocket, firstStream: () => void): () => void;
  /** Sends GOAWAY on every session: each closes once its open streams end. */
  closeAll(): void;
}

/** How long a session that got GOAWAY, with no stream left, may take to close before it is cut off. */
const GOAWAY_CLOSE_GRACE_MS = 1_000;

export function createHttp2Sessions(options: Http2SessionsOptions): Http2Sessions {
  const { maxConcurrentStreams, readMaxBytes, idleTimeoutMs, logger } = options;
  const server = createServer(
    {
      settings: {
        maxConcurrentStreams,
        // One whole message fits the window, so a call never waits on a
        // WINDOW_UPDATE; a stream nobody reads holds at most this much.
        initialWindowSize: Math.min(readMaxBytes + 5, 2 ** 31 - 1),
      },
    },
    options.handler,
  );
  /** Every open session, with how to end it. */
  const closers = new Map<ServerHttp2Session, () => void>();

  const govern = (
    session: ServerHttp2Session,
    socket: Socket | TLSSocket,
    firstStream: () => void,
  ): (() => void) => {
    let open = 0;
    let idle: NodeJS.Timeout | undefined;
    let started = false;
    let closing = false;
    // Node closes a session that got GOAWAY once its streams end, then waits
    // for the client to close the connection; one that does not is cut off.
    const cutOffLater = (): void => {
      setTimeout(() => socket.destroy(), GOAWAY_CLOSE_GRACE_MS).unref();
    };
    /** GOAWAY; the session closes once its streams end (at once when it has none). */
    const goAway = (reason: string): void => {
      if (closing || session.destroyed) return;
      closing = true;
      logger.debug({ reason, streamsOpen: open }, "ending an HTTP/2 session (GOAWAY)");
      clearTimeout(idle);
      session.close();
      if (open === 0) cutOffLater();
    };
    session.on("stream", (stream) => {
      if (!started) {
        started = true;
        firstStream();
      }
      open++;
      clearTimeout(idle);
      stream.once("close", () => {
        open--;
        if (session.destroyed) return;
        if (open > 0) return;
        if (closing || session.closed) cutOffLater();
        else idle = setTimeout(goAway, idleTimeoutMs, "idle");
      });
    });
    session.on("error", (err) => logger.debug({ err }, "HTTP/2 session error"));
    session.once("close", () => {
      clearTimeout(idle);
      closers.delete(session);
    });
    const end = (): void => goAway("closing");
    closers.set(session, end);
    return end;
  };

  return {
    serve(socket, firstStream) {
      let session: ServerHttp2Session | undefined;
      const capture = (s: ServerHttp2Session): void => {
        session = s;
      };
      // The server makes the session for a connection synchronously, in its
      // "connection" listener, and announces it before returning.
      server.once("session", capture);
      server.emit("connection", socket);
      server.off("session", capture);
      if (!session) {
        logger.error("the HTTP/2 server made no session for a connection");
        socket.destroy();
        return () => {};
      }
      return govern(session, socket, firstStream);
    },

    closeAll() {
      for (const close of closers.values()) close();
    },
  };
}
