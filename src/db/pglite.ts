import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, lstat, mkdir, readdir } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import { PGlite, type PGliteOptions, type Transaction, types } from "@electric-sql/pglite";
import type { Logger } from "pino";
import { StartupError } from "../errors.js";
import { acquireDataDirLock, type DataDirLock, dataDirProblem, inMemory } from "./data-dir-lock.js";
import type { Database, NotificationHandlers, Queryable, QueryResult } from "./database.js";

export { inMemory } from "./data-dir-lock.js";

/**
 * Modes for everything in a data directory: owner only. It holds password
 * hashes, session hashes and the server's signing key, and the WAL holds them
 * too.
 */
export const DATA_DIR_MODE = 0o700;
export const DATA_FILE_MODE = 0o600;

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

/** A Database on PGlite, which can also dump its data directory. */
export interface PgliteDatabase extends Database {
  /**
   * The data directory as a tarball (PGlite's `dumpDataDir`), which
   * `loadDataDir` starts another in-memory database from: tests migrate one
   * template per run and start each file's database from it, in a fraction of
   * an initdb's time.
   */
  dumpDataDir(): Promise<Blob>;
}

/**
 * A Database on embedded PGlite: real Postgres compiled to WebAssembly, in this
 * process. PGlite runs one query at a time, so a transaction holds the whole
 * database until it ends; `LISTEN/NOTIFY` works within the process.
 * A data directory on disk is held by this process alone until `close` (see
 * data-dir-lock.ts; `logger` hears of a stale lock taken over) and kept
 * owner-only (see {@link openDataDir}). An in-memory one starts from
 * `loadDataDir` (a {@link PgliteDatabase.dumpDataDir}) when given, instead of
 * an empty initdb.
 */
export async function createPgliteDatabase(
  dataDir: string,
  deps: { readonly logger?: Pick<Logger, "warn" | "error">; readonly loadDataDir?: Blob } = {},
): Promise<PgliteDatabase> {
  let lock: DataDirLock | undefined;
  let db: PGlite;
  if (dataDir === inMemory) {
    db = await PGlite.create(
      deps.loadDataDir === undefined ? options : { ...options, loadDataDir: deps.loadDataDir },
    );
  } else {
    if (deps.loadDataDir !== undefined) throw new Error("loadDataDir is for in-memory databases");
    ({ db, lock } = await openDataDir(dataDir, deps.logger));
  }
  return {
    kind: "pglite",
    ...adapt(db),
    transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
      return db.transaction((tx) => fn(adapt(tx)));
    },
    async listen(channel: string, handlers: NotificationHandlers) {
      return db.listen(channel, (payload) => handlers.message(payload));
    },
    dumpDataDir: () => db.dumpDataDir("none"),
    async close() {
      try {
        await db.close();
      } finally {
        await lock?.release();
      }
    },
  };
}

/**
 * Opens PGlite on `dataDir` so that nothing in it is readable by other users,
 * whatever the umask. PGlite writes through Emscripten's NODEFS, which
 * creates every file with `fs.writeFileSync(path, "", { mode: 0o777 })` and
 * every folder with `fs.mkdirSync(path, 0o777)`, leaving the umask to decide,
 * and then `chmod`s files to the mode Postgres asked for. That gives three
 * gaps, each closed here:
 *
 * 1. The folder itself: created 0700, and set to 0700 if it existed, before
 *    PGlite starts, so nobody else can reach anything inside even for a moment.
 * 2. The instant between creating a file and its chmod, when it has the
 *    umask's mode (0777 under umask 000): a reader who opens it then keeps
 *    reading it, WAL included. So the umask gets 077 added, for the rest of
 *    the process, since PGlite creates files (WAL segments, relations) for as
 *    long as it runs; cadenza writes no other files. Node reads the umask per
 *    call, so this covers files created later too.
 * 3. initdb `chmod`s its ~970 files to 0666, which no umask limits, and WAL
 *    segments are recycled by renaming old ones, keeping their mode. Folders
 *    made by older versions of cadenza are 0755 or 0777. So once PGlite is
 *    open, every file is set to 0600 and every folder to 0700.
 */
const options: PGliteOptions = {
  // PGlite reads int8 as a number when it fits one; pg (as configured) always
  // as a bigint. Callers compare IDs, so both must give bigint.
  parsers: { [types.INT8]: (value: string) => BigInt(value) },
  // Postgres's 128 MB of shared buffers live in PGlite's WebAssembly memory,
  // which never shrinks: an idle cadenza held ~340 MB after a restart. Its
  // tables are small and the data directory's files stay in the OS page
  // cache, so 8 MB (1,024 pages) costs no measurable speed (BENCHMARKS.md).
  startParams: [...PGlite.defaultStartParams, "-c", "shared_buffers=8MB"],
};

/**
 * Makes a fresh data directory (initdb) in a child process. initdb grows
 * PGlite's WebAssembly memory to ~500 MB, and a WebAssembly memory never
 * shrinks: done in this process, a first start kept it for its whole life
 * (and a worker thread's memory is not all given back either). The
 * directory is then opened here as on any restart.
 */
async function initdbInChild(dataDir: string): Promise<void> {
  const pglite = createRequire(import.meta.url).resolve("@electric-sql/pglite");
  const script = `const [pglite, dir] = process.argv.slice(1);
    require(pglite).PGlite.create(dir).then((db) => db.close());`;
  await new Promise<void>((resolve, reject) => {
    execFile(process.execPath, ["-e", script, pglite, dataDir], (err, _stdout, stderr) => {
      if (!err) return resolve();
      reject(new Error(`initdb for DATA_DIR=${dataDir} failed: ${stderr.trim() || err.message}`));
    });
  });
}

async function openDataDir(
  dataDir: string,
  logger: Pick<Logger, "warn" | "error"> | undefined,
): Promise<{ db: PGlite; lock: DataDirLock }> {
  process.umask(process.umask(0o077) | 0o077);
  try {
    await mkdir(dataDir, { recursive: true, mode: DATA_DIR_MODE });
  } catch (err) {
    throw dataDirProblem(dataDir, err) ?? err;
  }
  try {
    await chmod(dataDir, DATA_DIR_MODE);
  } catch (err) {
    // As Postgres, refuse a data directory that cannot be made private.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") throw dataDirProblem(dataDir, err) ?? err;
    throw new StartupError(
      `DATA_DIR=${dataDir} cannot be made owner-only (0700): it must belong to the user cadenza runs as`,
    );
  }
  // Before PGlite reads or writes anything in the directory.
  const lock = await acquireDataDirLock(dataDir, logger === undefined ? {} : { logger });
  let db: PGlite | undefined;
  try {
    if (!existsSync(join(dataDir, "PG_VERSION"))) await initdbInChild(dataDir);
    db = await PGlite.create(dataDir, options);
    await restrictTree(dataDir);
    return { db, lock };
  } catch (err) {
    await db?.close().catch(() => {});
    await lock.release();
    throw err;
  }
}

/** Sets every folder under `dir` to 0700 and every file to 0600; symlinks are left alone. */
async function restrictTree(dir: string): Promise<void> {
  // Concurrently: about a thousand files, on the start-up path.
  const entries = await readdir(dir, { withFileTypes: true });
  await Promise.all(
    entries.map(async (entry) => {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        await setMode(path, DATA_DIR_MODE);
        await restrictTree(path);
      } else if (entry.isFile()) {
        await setMode(path, DATA_FILE_MODE);
      }
    }),
  );
}

async function setMode(path: string, mode: number): Promise<void> {
  try {
    if (((await lstat(path)).mode & 0o777) !== mode) await chmod(path, mode);
  } catch (err) {
    // PGlite may remove a file it no longer needs (a temporary one) meanwhile.
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}
