import pg from "pg";
import type { Database, NotificationHandlers, Queryable, QueryResult } from "./database.js";

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
  /** Called with errors of idle connections, which would otherwise crash the process. */
  readonly onError: (err: Error, what: string) => void;
  /** Abort any statement running longer than this. */
  readonly statementTimeoutMs?: number;
}

function adapt(client: pg.Pool | pg.PoolClient): Queryable {
  return {
    async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryResult<R>> {
      const result = await client.query(sql, params.map(toPg));
      return { rows: result.rows as R[], rowCount: result.rowCount ?? result.rows.length };
    },
    async exec(sql: string): Promise<void> {
      await client.query(sql);
    },
  };
}

/** pg sends a Uint8Array that is not a Buffer as a string: wrap it. */
function toPg(value: unknown): unknown {
  return value instanceof Uint8Array && !Buffer.isBuffer(value)
    ? Buffer.from(value.buffer, value.byteOffset, value.byteLength)
    : value;
}

/** A Database on a `pg` connection pool. */
export function createPostgresDatabase(options: PostgresOptions): Database {
  const config: pg.PoolConfig = {
    connectionString: options.connectionString,
    max: options.poolSize,
    types,
    ...(options.statementTimeoutMs === undefined
      ? {}
      : { statement_timeout: options.statementTimeoutMs }),
  };
  const pool = new pg.Pool(config);
  pool.on("error", (err) => options.onError(err, "idle database connection"));
  const base = adapt(pool);
  const listeners = new Set<() => Promise<void>>();

  return {
    kind: "postgres",
    ...base,
    async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        const result = await fn(adapt(client));
        await client.query("COMMIT");
        return result;
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw err;
      } finally {
        client.release();
      }
    },
    async listen(channel: string, handlers: NotificationHandlers) {
      const stop = await listenWithReconnect(config, channel, handlers, options.onError);
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

/**
 * LISTEN on a dedicated connection (a pooled one would be handed to others),
 * re-established with backoff when it drops.
 */
async function listenWithReconnect(
  config: pg.PoolConfig,
  channel: string,
  handlers: NotificationHandlers,
  onError: (err: Error, what: string) => void,
): Promise<() => Promise<void>> {
  let client: pg.Client | undefined;
  let stopped = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let delayMs = 100;

  const connect = async (): Promise<void> => {
    const c = new pg.Client(config);
    c.on("notification", (msg) => {
      if (msg.channel === channel && msg.payload !== undefined) handlers.message(msg.payload);
    });
    c.on("error", (err) => {
      onError(err, "LISTEN connection");
      reconnect(c);
    });
    c.on("end", () => reconnect(c));
    await c.connect();
    await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    client = c;
    delayMs = 100;
  };

  const reconnect = (dead: pg.Client): void => {
    if (stopped || client !== dead) return;
    client = undefined;
    dead.removeAllListeners("end");
    dead.end().catch(() => {});
    const attempt = (): void => {
      retryTimer = undefined;
      if (stopped) return;
      connect().then(
        () => handlers.reconnected?.(),
        (err: Error) => {
          onError(err, "LISTEN reconnect");
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
      await c.end().catch(() => {});
    }
  };
}
