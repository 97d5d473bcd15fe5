import {
  constants,
  createServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from "node:http2";
import type { Socket } from "node:net";
import { performance } from "node:perf_hooks";
import type { TLSSocket } from "node:tls";
import type { Logger } from "pino";

/**
 * The HTTP/2 side of the one port: a Node `http2` server that never listens
 * itself (the listener hands it sockets), with the limits every session gets:
 * a cap on concurrent streams, flow-control windows sized to one message,
 * GOAWAY after an idle spell, and streams whose request nobody will read
 * reset, with GOAWAY, so that they cannot wedge the connection.
 */

export interface Http2SessionsOptions {
  /** The request handler shared with HTTP/1.1 (Fastify's, through the compatibility API). */
  readonly handler: (req: Http2ServerRequest, res: Http2ServerResponse) => void;
  readonly maxConcurrentStreams: number;
  /** READ_MAX_BYTES: each stream's receive window holds one whole message and its 5-byte envelope prefix. */
  readonly readMaxBytes: number;
  /** A stream whose request has not arrived whole by then is reset (CANCEL). */
  readonly requestTimeoutMs: number;
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

/** Resets a stream whose client is still sending (or not sending) its request. */
function resetIncomplete(stream: ServerHttp2Stream): void {
  if (!stream.destroyed && stream.state.remoteClose !== 1) stream.close(constants.NGHTTP2_CANCEL);
}

/** How long a session that got GOAWAY, with no stream left, may take to close before it is cut off. */
const GOAWAY_CLOSE_GRACE_MS = 1_000;

export function createHttp2Sessions(options: Http2SessionsOptions): Http2Sessions {
  const { maxConcurrentStreams, readMaxBytes, requestTimeoutMs, idleTimeoutMs, logger } = options;
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
    const resets = createResetBudget();
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
      endUnreadRequest(stream, goAway);
      let incomplete: NodeJS.Timeout | undefined = setTimeout(
        resetIncomplete,
        requestTimeoutMs,
        stream,
      );
      // The whole request has been read: nothing to time out, and a stream
      // that stays open (StreamSteps) holds no timer for it.
      stream.once("end", () => {
        clearTimeout(incomplete);
        incomplete = undefined;
      });
      stream.once("close", () => {
        clearTimeout(incomplete);
        open--;
        if (session.destroyed) return;
        // A stream the client reset before it was answered (rapid reset).
        const abandoned = stream.rstCode !== constants.NGHTTP2_NO_ERROR && !stream.headersSent;
        if (abandoned && !resets.take()) {
          logger.warn(
            { remoteAddress: socket.remoteAddress },
            "closing an HTTP/2 connection that resets streams faster than they can be answered",
          );
          session.destroy(new Error("rapid reset"), constants.NGHTTP2_ENHANCE_YOUR_CALM);
          return;
        }
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

/**
 * Streams a client may reset before their response began, at once and then
 * per second (rapid reset, CVE-2023-44487). Each costs the handler about half
 * a millisecond, and nghttp2's own limit lets a burst of 1,000 through (over
 * half a second of blocked event loop, measured); once the session is
 * destroyed, the rest of a flood is not handed to the handler at all.
 */
const RESET_BURST = 200;
const RESETS_PER_SECOND = 20;

/** A token bucket of stream resets: `take()` is false once a client has used it up. */
function createResetBudget(): { take(): boolean } {
  let tokens = RESET_BURST;
  let last = performance.now();
  return {
    take() {
      const now = performance.now();
      tokens = Math.min(RESET_BURST, tokens + ((now - last) / 1000) * RESETS_PER_SECOND);
      last = now;
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    },
  };
}

/**
 * How long a stream may go on receiving a request body nobody reads, after
 * its response is complete, before it is reset.
 */
const UNREAD_BODY_GRACE_MS = 1_000;

/**
 * A response can be complete while its request is still arriving: Connect
 * refuses an oversize message after reading its first five bytes, a route
 * ignores a body. Node's HTTP/2 client (under connect-node and grpc-js) never
 * gives back the memory it counted for a request body it could not send, and
 * once 10 MiB of such bodies have piled up on one connection it refuses every
 * later response there with ENHANCE_YOUR_CALM. So the session gets GOAWAY at
 * once (the client goes on with a fresh connection and a fresh count), the
 * rest of the body is read and thrown away so that the client can finish,
 * and a stream still open after {@link UNREAD_BODY_GRACE_MS} is reset
 * (NO_ERROR, RFC 9113 §8.1). connect-node, for one, never finishes such a
 * body; resetting it sooner, right after the trailers, can reach it before it
 * has read them.
 */
function endUnreadRequest(stream: ServerHttp2Stream, endSession: (reason: string) => void): void {
  stream.once("finish", () => {
    // Reset already (by the client, or for taking too long), or the request is whole.
    if (stream.closed || stream.destroyed || stream.state.remoteClose === 1) return;
    endSession("a response completed before its request body");
    // The compatibility layer's "data" listener pauses the stream again on
    // every chunk its finished request refuses; reading in paused mode is
    // immune to that.
    stream.removeAllListeners("data");
    const drain = (): void => {
      while (stream.read() !== null);
    };
    stream.on("readable", drain);
    drain();
    const reset = setTimeout(() => {
      if (!stream.destroyed) stream.close(constants.NGHTTP2_NO_ERROR);
    }, UNREAD_BODY_GRACE_MS);
    stream.once("close", () => clearTimeout(reset));
  });
}
