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

  /**
   * One accepted connection. A class, and listeners shared by every socket,
   * rather than closures each: every open connection (10,000 streams are
   * 10,000 of them) holds one of these for as long as it lives.
   */
  class Tracked implements Connection {
    phase: Phase = "opening";
    deadline: NodeJS.Timeout | undefined;
    private closer: (() => void) | undefined;

    constructor(
      readonly socket: Socket,
      readonly key: string | undefined,
    ) {}

    setClose(close: () => void): void {
      this.closer = close;
    }

    close(): void {
      if (this.closer) this.closer();
      else this.socket.destroy();
    }

    requestArrived(): void {
      if (this.phase !== "opening") return;
      this.phase = "serving";
      clearTimeout(this.deadline);
      this.deadline = undefined;
    }
  }

  function deadlinePassed(conn: Tracked): void {
    logger.debug(
      { remoteAddress: conn.socket.remoteAddress, deadlineMs: requestDeadlineMs },
      "closing a connection that sent no complete request in time",
    );
    conn.close();
  }
  function socketError(err: Error): void {
    logger.debug({ err }, "connection error");
  }
  function closed(conn: Tracked): void {
    clearTimeout(conn.deadline);
    conn.deadline = undefined;
    if (conn.key !== undefined && open.get(conn.key) === conn) open.delete(conn.key);
    if (open.size === 0) onDrained?.();
  }

  return {
    accept(socket) {
      const conn = new Tracked(socket, peerKey(socket));
      conn.deadline = setTimeout(deadlinePassed, requestDeadlineMs, conn);
      // A client may reset the connection at any time, even before a protocol
      // server (which handles its own socket errors) has it.
      socket.on("error", socketError);
      if (conn.key !== undefined) open.set(conn.key, conn);
      socket.once("close", () => closed(conn));
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
