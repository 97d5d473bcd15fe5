import pg from "pg";
import type { Logger } from "pino";
import { databaseUrlSecrets } from "../database-url.js";
import {
  databaseUnavailable,
  type FailurePhase,
  isConnectionFailure,
  isDatabaseUnavailable,
} from "./connection-failure.js";
import type { Database, NotificationHandlers, Queryable, QueryResult } from "./database.js";
import { createOutageTracker, type OutageLogger, type OutageTracker } from "./outage-tracker.js";

const INT8_OID = 20;
const BYTEA_OID = 17;

/**
 * int8 as bigint (pg's default is a string) and bytea as a plain Uint8Array
 * (pg's default is a Buffer), to match PGlite.
 */
const types = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === INT8_OID) return (value: string) => BigInt(value);
    if (oid === BYTEA_OID) {
      const parseBuffer = pg.types.getTypeParser(oid, "text") as (v: string) => Buffer;
      return (value: string) => {
        const buffer = parseBuffer(value);
        return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
      };
    }
    return pg.types.getTypeParser(oid, format ?? "text");
  },
} as const;

export interface PostgresOptions {
  readonly connectionString: string;
  readonly poolSize: number;
  /**
   * How long getting a connection may take: opening a new one (TCP, startup,
   * authentication), or waiting for a pooled one when all are busy.
   */
  readonly connectTimeoutMs: number;
  /**
   * How long a statement may take. The server cancels it then
   * (`statement_timeout`), and cadenza stops waiting for an answer then
   * (pg's `query_timeout`), which is what ends a call to a frozen database.
   */
  readonly queryTimeoutMs: number;
  /** Where outages are logged, once each with their recovery (see outage-tracker.ts). */
  readonly logger: OutageLogger & Pick<Logger, "warn">;
}

/** pg sends a Uint8Array that is not a Buffer as a string: wrap it. */
function toPg(value: unknown): unknown {
  return value instanceof Uint8Array && !Buffer.isBuffer(value)
    ? Buffer.from(value.buffer, value.byteOffset, value.byteLength)
    : value;
}

/**
 * A Database on a `pg` connection pool, with every wait bounded: connect and
 * acquire by `connectTimeoutMs`, statements by `queryTimeoutMs`. A call that
 * cannot reach the database fails with {@link databaseUnavailable}
 * (Unavailable, `hrpc.unavailable`); other SQL errors reach callers as pg
 * raised them, so they can match SQLSTATEs (`uniqueViolation`).
 */
export function createPostgresDatabase(options: PostgresOptions): Database {
  const config: pg.PoolConfig = {
    connectionString: options.connectionString,
    max: options.poolSize,
    types,
    // pg-pool applies this both to opening a connection and to waiting for a
    // free one ("timeout exceeded when trying to connect").
    connectionTimeoutMillis: options.connectTimeoutMs,
    query_timeout: options.queryTimeoutMs,
    statement_timeout: options.queryTimeoutMs,
    // Lets the kernel eventually notice a peer that vanished without closing
    // the connection: a LISTEN connection sends nothing of its own.
    keepAlive: true,
    keepAliveInitialDelayMillis: 30_000,
  };
  const tracker = createOutageTracker(options.logger, databaseUrlSecrets(options.connectionString));
  const pool = new pg.Pool(config);
  pool.on("error", (err) => {
    if (isConnectionFailure(err, "query")) tracker.failed(err, "idle connection");
    else options.logger.warn({ cause: tracker.describe(err) }, "idle database connection closed");
  });
  const listeners = new Set<() => Promise<void>>();

  /** A pooled connection, with errors on it caught while it is checked out. */
  const acquire = async (): Promise<Checkout> => {
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      throw failure(tracker, err, "connect", "connect");
    }
    // pg emits a socket error on the client too, and a checked-out client has
    // no listener of its own: without this, a reset would crash the process.
    const onError = (err: Error): void => {
      checkout.broken ??= err;
    };
    client.on("error", onError);
    const checkout: Checkout = {
      client,
      broken: undefined,
      release() {
        client.off("error", onError);
        client.release(checkout.broken);
      },
    };
    return checkout;
  };

  const onPool = async <T>(run: (q: Queryable) => Promise<T>): Promise<T> => {
    const started = tracker.now();
    const checkout = await acquire();
    try {
      return await run(adapt(checkout, tracker, started));
    } finally {
      checkout.release();
    }
  };

  return {
    kind: "postgres",
    query: (sql, params) => onPool((q) => q.query(sql, params)),
    exec: (sql) => onPool((q) => q.exec(sql)),
    async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      const started = tracker.now();
      const checkout = await acquire();
      const tx = adapt(checkout, tracker, started);
      try {
        await tx.exec("BEGIN");
        const result = await fn(tx);
        try {
          await tx.exec("COMMIT");
        } catch (err) {
          // The connection died with COMMIT sent: it may or may not have
          // committed, so the caller must not treat it as rolled back.
          if (isDatabaseUnavailable(err)) {
            throw databaseUnavailable(
              new Error("the connection was lost during COMMIT: the outcome is unknown", {
                cause: err.cause,
              }),
            );
          }
          throw err;
        }
        return result;
      } catch (err) {
        // On a lost connection the server rolls back by itself; a ROLLBACK would
        // only wait behind the statement that hung.
        if (checkout.broken === undefined) {
          await tx.exec("ROLLBACK").catch((rollbackFailed: unknown) => {
            checkout.broken ??=
              rollbackFailed instanceof Error ? rollbackFailed : new Error("ROLLBACK failed");
          });
        }
        throw err;
      } finally {
        checkout.release();
      }
    },
    async listen(channel: string, handlers: NotificationHandlers) {
      const stop = await listenWithReconnect(
        config,
        channel,
        handlers,
        tracker,
        options.connectTimeoutMs,
      );
      listeners.add(stop);
      return async () => {
        listeners.delete(stop);
        await stop();
      };
    },
    async close() {
      await Promise.all([...listeners].map((stop) => stop()));
      await pool.end();
    },
  };
}

interface Checkout {
  readonly client: pg.PoolClient;
  /** Set when the connection can no longer be used: it is then discarded, not pooled. */
  broken: Error | undefined;
  release(): void;
}

/**
 * Records a failure of `phase` with the tracker and returns what to throw:
 * {@link databaseUnavailable} for a connection-level failure, else `err` itself.
 */
function failure(
  tracker: OutageTracker,
  err: unknown,
  phase: FailurePhase,
  during: string,
): unknown {
  if (!isConnectionFailure(err, phase)) return err;
  tracker.failed(err, during);
  return databaseUnavailable(err);
}

/** Statements on a checked-out connection, classified and tracked. */
function adapt(checkout: Checkout, tracker: OutageTracker, started: number): Queryable {
  const run = async (sql: string, params?: readonly unknown[]): Promise<pg.QueryResult> => {
    try {
      const result =
        params === undefined
          ? await checkout.client.query(sql)
          : await checkout.client.query(sql, params.map(toPg));
      tracker.succeeded(started);
      return result;
    } catch (err) {
      const thrown = failure(tracker, err, "query", "query");
      if (isDatabaseUnavailable(thrown)) checkout.broken ??= err as Error;
      // The server answered, if only to refuse the statement.
      else tracker.succeeded(started);
      throw thrown;
    }
  };
  return {
    async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryResult<R>> {
      const result = await run(sql, params);
      return { rows: result.rows as R[], rowCount: result.rowCount ?? result.rows.length };
    },
    async exec(sql: string): Promise<void> {
      await run(sql);
    },
  };
}

/**
 * Ends a client politely, or destroys its socket after `waitMs`: a frozen
 * server never answers the goodbye, and `end()` would wait for ever.
 */
async function endClient(client: pg.Client, waitMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    client.end().catch(() => {}),
    new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        client.connection.stream.destroy();
        resolve();
      }, waitMs);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * LISTEN on a dedicated connection (a pooled one would be handed to others),
 * re-established with backoff when it drops. Its failures and recoveries go
 * to the same tracker as the pool's.
 */
async function listenWithReconnect(
  config: pg.PoolConfig,
  channel: string,
  handlers: NotificationHandlers,
  tracker: OutageTracker,
  endWaitMs: number,
): Promise<() => Promise<void>> {
  let client: pg.Client | undefined;
  let stopped = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let delayMs = 100;

  const connect = async (): Promise<void> => {
    const started = tracker.now();
    const c = new pg.Client(config);
    c.on("notification", (msg) => {
      if (msg.channel === channel && msg.payload !== undefined) handlers.message(msg.payload);
    });
    c.on("error", (err) => {
      tracker.failed(err, "LISTEN connection");
      reconnect(c);
    });
    c.on("end", () => reconnect(c));
    try {
      await c.connect();
    } catch (err) {
      throw failure(tracker, err, "connect", "LISTEN connect");
    }
    try {
      await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (err) {
      // Connected but not listening: close it rather than leak it.
      c.removeAllListeners("end");
      void endClient(c, endWaitMs);
      throw failure(tracker, err, "query", "LISTEN");
    }
    tracker.succeeded(started);
    if (stopped) {
      // Stopped while this attempt was connecting.
      c.removeAllListeners("end");
      await endClient(c, endWaitMs);
      return;
    }
    client = c;
    delayMs = 100;
  };

  const reconnect = (dead: pg.Client): void => {
    if (stopped || client !== dead) return;
    client = undefined;
    dead.removeAllListeners("end");
    void endClient(dead, endWaitMs);
    const attempt = (): void => {
      retryTimer = undefined;
      if (stopped) return;
      connect().then(
        () => handlers.reconnected?.(),
        () => {
          // Already recorded by the tracker (logged once per outage).
          delayMs = Math.min(delayMs * 2, 5000);
          retryTimer = setTimeout(attempt, delayMs);
        },
      );
    };
    retryTimer = setTimeout(attempt, delayMs);
  };

  await connect();
  return async () => {
    stopped = true;
    if (retryTimer) clearTimeout(retryTimer);
    const c = client;
    client = undefined;
    if (c) {
      c.removeAllListeners("end");
      await endClient(c, endWaitMs);
    }
  };
}
