import type { Socket } from "node:net";
import type { Logger } from "pino";

/**
 * Every accepted connection, from accept to close: the deadline for its first
 * request, and what shutdown does with it. The protocol servers (HTTP/1.1,
 * HTTP/2) own the connection once it is handed to them; this registry only
 * knows how to end it.
 */

/** What a connection has done so far, as the deadline and shutdown see it. */
type Phase =
  /** Accepted; no request yet (sniffing, TLS handshake, partial headers or preface). */
  | "opening"
  /** At least one request (an HTTP/2 stream, a WebSocket upgrade) arrived. */
  | "serving";

export interface Connection {
  /** The accepted TCP socket. */
  readonly socket: Socket;
  /**
   * How to end this connection gracefully (HTTP/2: GOAWAY), set when it is
   * handed to a protocol server; destroying the socket until then.
   */
  setClose(close: () => void): void;
  /** The first request's headers arrived: the first-request deadline no longer applies. */
  requestArrived(): void;
}

export interface Connections {
  /** Starts tracking an accepted socket; it must complete a request within the deadline. */
  accept(socket: Socket): Connection;
  /** The connection a socket belongs to: the accepted one, or a TLS socket over it. */
  find(socket: {
    remoteAddress?: string | undefined;
    remotePort?: number | undefined;
  }): Connection | undefined;
  /** Open connections. */
  readonly size: number;
  /** Ends every connection that has not sent a request yet (shutdown: nothing of theirs is in flight). */
  closeOpening(): void;
  /** Resolves once no connection is open. */
  drained(): Promise<void>;
  /** Destroys every connection left (the end of the shutdown grace). */
  destroyAll(): void;
}

export interface ConnectionsOptions {
  /** Time from accept to the first request's headers. */
  readonly requestDeadlineMs: number;
  readonly logger: Logger;
}

/**
 * A connection is known by its peer's address and port, the same on the
 * accepted socket, a TLS socket over it and an HTTP/2 session's socket proxy.
 */
const peerKey = (socket: {
  remoteAddress?: string | undefined;
  remotePort?: number | undefined;
}): string | undefined =>
  socket.remoteAddress === undefined || socket.remotePort === undefined
    ? undefined
    : `${socket.remoteAddress}|${socket.remotePort}`;

export function createConnections(options: ConnectionsOptions): Connections {
  const { requestDeadlineMs, logger } = options;
  const open = new Map<string, Tracked>();
  let onDrained: (() => void) | undefined;

  interface Tracked extends Connection {
    phase: Phase;
    close(): void;
  }

  return {
    accept(socket) {
      const key = peerKey(socket);
      let deadline: NodeJS.Timeout | undefined;
      const conn: Tracked = {
        socket,
        phase: "opening",
        close: () => socket.destroy(),
        setClose(close) {
          conn.close = close;
        },
        requestArrived() {
          if (conn.phase !== "opening") return;
          conn.phase = "serving";
          clearTimeout(deadline);
        },
      };
      deadline = setTimeout(() => {
        logger.debug(
          { remoteAddress: socket.remoteAddress, deadlineMs: requestDeadlineMs },
          "closing a connection that sent no complete request in time",
        );
        conn.close();
      }, requestDeadlineMs);
      // A client may reset the connection at any time, even before a protocol
      // server (which handles its own socket errors) has it.
      socket.on("error", (err) => logger.debug({ err }, "connection error"));
      if (key !== undefined) open.set(key, conn);
      socket.once("close", () => {
        clearTimeout(deadline);
        if (key !== undefined && open.get(key) === conn) open.delete(key);
        if (open.size === 0) onDrained?.();
      });
      return conn;
    },

    find(socket) {
      const key = peerKey(socket);
      return key === undefined ? undefined : open.get(key);
    },

    get size() {
      return open.size;
    },

    closeOpening() {
      for (const conn of open.values()) if (conn.phase === "opening") conn.close();
    },

    drained() {
      if (open.size === 0) return Promise.resolve();
      return new Promise<void>((resolve) => {
        onDrained = resolve;
      });
    },

    destroyAll() {
      for (const conn of open.values()) conn.socket.destroy();
    },
  };
}
