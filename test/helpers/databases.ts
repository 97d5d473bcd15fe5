import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import pg from "pg";
import { pino } from "pino";
import { inject } from "vitest";
import type { Database } from "../../src/db/database.js";
import { migrate } from "../../src/db/migrate.js";
import { createPgliteDatabase, inMemory } from "../../src/db/pglite.js";
import { createPostgresDatabase } from "../../src/db/postgres.js";

/** A database a test file owns, with the URL other processes can reach it by (Postgres only). */
export interface TestDatabase {
  readonly db: Database;
  /** A DATABASE_URL for this database (and schema), for spawned servers. */
  readonly url: string | undefined;
  /** Empties every table, for tests that need a clean slate. */
  truncate(): Promise<void>;
  close(): Promise<void>;
}

export interface TestBackend {
  readonly name: "pglite" | "postgres";
  /** Opens a fresh, migrated database for one test file. */
  open(options?: { migrate?: boolean }): Promise<TestDatabase>;
}

const postgresUrl = process.env.TEST_DATABASE_URL?.trim() || undefined;

const tables =
  "users, sessions, auth_flows, auth_flow_steps, server_keys, remote_server_keys, " +
  "used_federation_tokens, account_events, login_failures, rate_limits, invites";

function wrap(db: Database, url: string | undefined, cleanup: () => Promise<void>): TestDatabase {
  return {
    db,
    url,
    truncate: () => db.exec(`TRUNCATE ${tables} CASCADE`),
    close: cleanup,
  };
}

let template: Blob | undefined;
/** The migrated database test/helpers/global-setup.ts dumped for this run, read once per file. */
function migratedTemplate(): Blob {
  template ??= new Blob([readFileSync(inject("pgliteTemplate"))]);
  return template;
}

/**
 * Fills `dataDir` (made if missing) with the migrated template, for a cadenza
 * started as a process with DATA_DIR=`dataDir`: it opens it as on any restart,
 * skipping initdb's child process (~2-3 s). Tests of a first start keep an
 * empty DATA_DIR.
 */
export function migratedDataDir(dataDir: string): string {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  execFileSync("tar", ["-xf", inject("pgliteTemplate"), "-C", dataDir], { stdio: "ignore" });
  return dataDir;
}

export const pglite: TestBackend = {
  name: "pglite",
  async open(options = {}) {
    const db =
      options.migrate === false
        ? await createPgliteDatabase(inMemory)
        : await createPgliteDatabase(inMemory, { loadDataDir: migratedTemplate() });
    return wrap(db, undefined, () => db.close());
  },
};

/** A URL whose connections default to `schema`, so test files can run in parallel on one database. */
export function withSearchPath(url: string, schema: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set("options", `-c search_path=${schema}`);
  return parsed.toString();
}

const postgres: TestBackend = {
  name: "postgres",
  async open(options = {}) {
    if (!postgresUrl) throw new Error("TEST_DATABASE_URL is not set");
    const schema = `t_${randomBytes(6).toString("hex")}`;
    const admin = new pg.Client({ connectionString: postgresUrl });
    await admin.connect();
    await admin.query(`CREATE SCHEMA ${schema}`);
    await admin.end();
    const url = withSearchPath(postgresUrl, schema);
    const db = createPostgresDatabase({
      connectionString: url,
      poolSize: 10,
      connectTimeoutMs: 5_000,
      queryTimeoutMs: 10_000,
      logger: pino({ level: "silent" }),
    });
    if (options.migrate !== false) await migrate(db);
    return wrap(db, url, async () => {
      await db.close();
      const c = new pg.Client({ connectionString: postgresUrl });
      await c.connect();
      await c.query(`DROP SCHEMA ${schema} CASCADE`);
      await c.end();
    });
  },
};

/** PGlite always; Postgres too when TEST_DATABASE_URL is set. Use with `describe.each`. */
export const backends: readonly TestBackend[] = postgresUrl ? [pglite, postgres] : [pglite];

/** Postgres when TEST_DATABASE_URL is set (for tests that need several processes). */
export const postgresBackend: TestBackend | undefined = postgresUrl ? postgres : undefined;
