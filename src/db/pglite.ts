import { mkdir } from "node:fs/promises";
import { PGlite, type Transaction, types } from "@electric-sql/pglite";
import type { Database, NotificationHandlers, Queryable, QueryResult } from "./database.js";

/** `DATA_DIR` value for a database that lives only in memory. */
export const inMemory = "memory://";

function adapt(db: PGlite | Transaction): Queryable {
  return {
    async query<R>(sql: string, params: readonly unknown[] = []): Promise<QueryResult<R>> {
      const result = await db.query<R>(sql, params as unknown[]);
      return { rows: result.rows, rowCount: result.affectedRows || result.rows.length };
    },
    async exec(sql: string): Promise<void> {
      await db.exec(sql);
    },
  };
}

/**
 * A Database on embedded PGlite: real Postgres compiled to WebAssembly, in this
 * process. PGlite runs one query at a time, so a transaction holds the whole
 * database until it ends; `LISTEN/NOTIFY` works within the process.
 */
export async function createPgliteDatabase(dataDir: string): Promise<Database> {
  if (dataDir !== inMemory) await mkdir(dataDir, { recursive: true });
  const db = await PGlite.create(dataDir === inMemory ? undefined : dataDir, {
    // PGlite reads int8 as a number when it fits one; pg (as configured) always
    // as a bigint. Callers compare IDs, so both must give bigint.
    parsers: { [types.INT8]: (value: string) => BigInt(value) },
  });
  return {
    kind: "pglite",
    ...adapt(db),
    transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      return db.transaction((tx) => fn(adapt(tx)));
    },
    async listen(channel: string, handlers: NotificationHandlers) {
      return db.listen(channel, (payload) => handlers.message(payload));
    },
    async close() {
      await db.close();
    },
  };
}
