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
  /** Where the pool goes: every statement and transaction (DATABASE_URL). */
  readonly connectionString: string;
  /**
   * Where the LISTEN connections go (DATABASE_LISTEN_URL; default
   * `connectionString`). A different URL says `connectionString` is a pooler
   * such as PgBouncer, which gives a client no session of its own: see
   * {@link createPostgresDatabase}.
   */
  readonly listenConnectionString?: string | undefined;
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
 *
 * The pool may go through a pooler in transaction mode (PgBouncer's
 * `pool_mode = transaction`), which hands each transaction, or each statement
 * outside one, to whichever server connection is free. So nothing cadenza
 * runs on the pool relies on session state:
 * - no named prepared statements: pg prepares each parameterised query as the
 *   unnamed statement, in the same round trip, and no query passes a `name`
 *   (rate-limiter-flexible names its queries, but src/limits/rate-limits.ts
 *   forwards only their text and values);
 * - advisory locks are transaction-scoped only (`pg_advisory_xact_lock`, in
 *   migrate.ts, federation-stores.ts and account-event-store.ts);
 * - no `SET` but `SET LOCAL`: the statement timeout is set in each
 *   transaction (see `transaction` below), and on a pooled
 *   `connectionString` not sent at start-up at all;
 * - LISTEN, which needs a session, is on connections of its own to
 *   `listenConnectionString`, never on the pool.
 * NOTIFY is `pg_notify` in statements on the pool: Postgres delivers it at
 * COMMIT, whichever server connection ran it.
 */
export function createPostgresDatabase(options: PostgresOptions): Database {
  const listenConnectionString = options.listenConnectionString ?? options.connectionString;
  const pooled = listenConnectionString !== options.connectionString;
  // What every connection gets, pooled or LISTEN.
  const connection = {
    types,
    // pg-pool applies this both to opening a connection and to waiting for a
    // free one ("timeout exceeded when trying to connect").
    connectionTimeoutMillis: options.connectTimeoutMs,
    query_timeout: options.queryTimeoutMs,
    // Lets the kernel eventually notice a peer that vanished without closing
    // the connection: a LISTEN connection sends nothing of its own.
    keepAlive: true,
    keepAliveInitialDelayMillis: 30_000,
  } as const;
  // pg sends statement_timeout as a startup parameter. PgBouncer refuses every
  // startup parameter it does not know ("unsupported startup parameter:
  // statement_timeout", 08P01), or drops it when `ignore_startup_parameters`
  // lists it: session state does not follow a client from one server
  // connection to the next. So when pooled the pool sends none, and relies on
  // the SET LOCAL in each transaction (and on the role's setting, README).
  const startupTimeout = { statement_timeout: options.queryTimeoutMs };
  const config: pg.PoolConfig = {
    ...connection,
    ...(pooled ? {} : startupTimeout),
    connectionString: options.connectionString,
    max: options.poolSize,
  };
  // Postgres itself takes it, and a DATABASE_LISTEN_URL pointed at PgBouncer
  // by mistake then fails at start-up instead of losing notifications quietly.
  const listenConfig: pg.ClientConfig = {
    ...connection,
    ...startupTimeout,
    connectionString: listenConnectionString,
  };
  const secrets = [
    ...databaseUrlSecrets(options.connectionString),
    ...databaseUrlSecrets(listenConnectionString),
  ];
  const tracker = createOutageTracker(options.logger, secrets);
  // A pooler and Postgres fail apart: one tracker for each, or a pool query
  // through a healthy pooler would log a recovery while LISTEN still fails.
  const listenTracker = pooled ? createOutageTracker(options.logger, secrets) : tracker;
  const pool = new pg.Pool(config);
  pool.on("error", (err) => {
    if (isConnectionFailure(err, "query")) tracker.failed(err, "idle connection");
    else options.logger.warn({ cause: tracker.describe(err) }, "idle database connection closed");
  });
  const listeners = new Set<() => Promise<void>>();
  const statementTimeoutMs = Math.trunc(options.queryTimeoutMs);

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
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    query: (sql, params) => onPool((q) => q.query(sql, params)),
    exec: (sql) => onPool((q) => q.exec(sql)),
    async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      const started = tracker.now();
      const checkout = await acquire();
      const tx = adapt(checkout, tracker, started);
      try {
        // SET LOCAL ends with the transaction, so behind a pooler it holds for
        // exactly this transaction and never stays on a server connection
        // handed to another client afterwards. Sent with BEGIN: no extra round trip.
        await tx.exec(`BEGIN; SET LOCAL statement_timeout = ${statementTimeoutMs}`);
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
        listenConfig,
        channel,
        handlers,
        listenTracker,
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
 * to the pool's tracker when both reach the same server.
 *
 * It must reach Postgres itself: through PgBouncer in transaction mode the
 * LISTEN runs on a server connection that goes back to the pool once the
 * statement ends, and PgBouncer drops what arrives there ("got packet 'A'
 * from server when not linked"), so notifications never reach this client.
 */
async function listenWithReconnect(
  config: pg.ClientConfig,
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
