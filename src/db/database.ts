/**
 * The storage port: the little cadenza needs from a SQL database, implemented
 * by a `pg` pool (src/db/postgres.ts) and by embedded PGlite (src/db/pglite.ts).
 * Both adapters normalise driver differences so callers see the same values:
 * int8 as `bigint`, bytea as `Uint8Array`, timestamptz as `Date`.
 */

export type Row = Record<string, unknown>;

export interface QueryResult<R> {
  readonly rows: R[];
  /** Rows returned, or affected by INSERT/UPDATE/DELETE. */
  readonly rowCount: number;
}

/** Something SQL can run on: the database itself or an open transaction. */
export interface Queryable {
  /** Runs one statement with `$1…$n` parameters. */
  query<R = Row>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>>;
  /** Runs a script of several statements without parameters (migrations). */
  exec(sql: string): Promise<void>;
}

export interface NotificationHandlers {
  message(payload: string): void;
  /**
   * Called after the listening connection was lost and re-established:
   * notifications sent in between are gone, so listeners must re-read state.
   */
  reconnected?(): void;
}

export interface Database extends Queryable {
  readonly kind: "postgres" | "pglite";
  /** The connection pool's state, for metrics (Postgres only). */
  poolStats?(): { total: number; idle: number; waiting: number };
  /**
   * Runs `fn` in a transaction on one connection: committed when `fn` resolves,
   * rolled back when it throws. Code inside must use `tx`, never the database.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** LISTENs on a channel until the returned function is called. */
  listen(channel: string, handlers: NotificationHandlers): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** The single row a statement must return. */
export async function one<R = Row>(
  q: Queryable,
  sql: string,
  params: readonly unknown[] = [],
): Promise<R> {
  const { rows } = await q.query<R>(sql, params);
  const row = rows[0];
  if (row === undefined || rows.length > 1) {
    throw new Error(`expected exactly one row, got ${rows.length}`);
  }
  return row;
}

/** The first row, or undefined when there is none. */
export async function maybeOne<R = Row>(
  q: Queryable,
  sql: string,
  params: readonly unknown[] = [],
): Promise<R | undefined> {
  const { rows } = await q.query<R>(sql, params);
  return rows[0];
}

/** All rows. */
export async function many<R = Row>(
  q: Queryable,
  sql: string,
  params: readonly unknown[] = [],
): Promise<R[]> {
  return (await q.query<R>(sql, params)).rows;
}

/**
 * The constraint a unique violation (SQLSTATE 23505) hit, or undefined when
 * `err` is something else. pg and PGlite both report `code` and `constraint`.
 */
export function uniqueViolation(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && (err as { code?: unknown }).code === "23505") {
    const constraint = (err as { constraint?: unknown }).constraint;
    return typeof constraint === "string" ? constraint : "";
  }
  return undefined;
}
