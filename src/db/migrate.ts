import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Database } from "./database.js";

/** The folder holding the numbered `.sql` migrations, next to this module. */
const migrationsDir = fileURLToPath(new URL("./migrations/", import.meta.url));

/** An arbitrary constant: the advisory lock all cadenza processes agree on. */
const MIGRATION_LOCK_KEY = 0x63_61_64_65_6e; // "caden"

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

/** The migrations shipped with this build, in order. */
export async function loadMigrations(dir = migrationsDir): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return Promise.all(
    files.map(async (file) => ({
      version: Number(file.slice(0, 4)),
      name: file.replace(/\.sql$/, ""),
      sql: await readFile(join(dir, file), "utf8"),
    })),
  );
}

/**
 * Applies every migration not yet applied, in order, and records each, all in
 * one transaction under an advisory lock: of processes starting together, the
 * first applies them all and the others, once the lock is theirs, find
 * nothing left to do. A failing migration leaves the schema as it was.
 * Returns the names applied by this call.
 */
export async function migrate(db: Database, migrations?: readonly Migration[]): Promise<string[]> {
  const all = migrations ?? (await loadMigrations());
  // The common case, every migration already applied, needs no lock and no transaction.
  const done = await db
    .query<{ version: number }>("SELECT version FROM schema_migrations")
    .then((r) => new Set(r.rows.map((row) => row.version)))
    .catch(() => new Set<number>());
  if (all.every((m) => done.has(m.version))) return [];
  return db.transaction(async (tx) => {
    await tx.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK_KEY]);
    await tx.exec(
      `CREATE TABLE IF NOT EXISTS schema_migrations (
         version int4 PRIMARY KEY,
         name text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    );
    const { rows } = await tx.query<{ version: number }>("SELECT version FROM schema_migrations");
    const applied = new Set(rows.map((r) => r.version));
    const names: string[] = [];
    for (const migration of all) {
      if (applied.has(migration.version)) continue;
      await tx.exec(migration.sql);
      await tx.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [
        migration.version,
        migration.name,
      ]);
      names.push(migration.name);
    }
    return names;
  });
}

/** The highest migration version recorded, or 0 on an empty database. */
export async function appliedVersion(db: Database): Promise<number> {
  const { rows } = await db.query<{ version: number | null }>(
    "SELECT max(version) AS version FROM schema_migrations",
  );
  return rows[0]?.version ?? 0;
}
