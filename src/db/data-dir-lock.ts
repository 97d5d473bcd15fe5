import { randomBytes } from "node:crypto";
import { constants, readFileSync, readlinkSync, statSync, unlinkSync } from "node:fs";
import { access, type FileHandle, link, open, rename, stat, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Logger } from "pino";
import { StartupError } from "../errors.js";

/**
 * One process per PGlite data directory. PGlite is Postgres in this process
 * with no postmaster to refuse a second one, so two processes that open one
 * directory each write it as if alone, and one's writes are lost (a key
 * rotated by the CLI while the server ran). This lock makes the second fail.
 *
 * The lock is a file, `DATA_DIR/cadenza.lock`, created with O_EXCL (`wx`):
 * only one process can create it, on every local file system and without a
 * native module (Node has no flock). It records who holds it; the holder
 * deletes it on close and at exit, and refreshes its mtime every
 * {@link REFRESH_MS}. A holder that died without deleting it (kill -9, power
 * loss) is recognised and its lock taken over:
 *
 * - When this process can see the holder's processes (same kernel boot and
 *   PID namespace on Linux; same host name elsewhere): stale when the PID is
 *   not running, is this process's own (a restarted container numbers its
 *   processes from 1 again), or now belongs to a process that started at
 *   another time (a reused PID).
 * - Otherwise (another container, another host on a shared volume), its PID
 *   means nothing here: stale when not refreshed for {@link STALE_AFTER_MS}.
 *   A PID equal to ours is not taken as stale then: `docker compose run`
 *   starts the CLI as PID 1 in a new container beside a server that is PID 1
 *   in its own.
 */

/** `DATA_DIR` value for a database that lives only in memory, which needs no lock. */
export const inMemory = "memory://";

export const LOCK_FILE = "cadenza.lock";
/** How often the holder refreshes the lock file's mtime. */
export const REFRESH_MS = 5_000;
/** How long a lock whose holder's processes cannot be seen from here lives unrefreshed. */
export const STALE_AFTER_MS = 30_000;

/** What the lock file records about its holder. */
export interface LockHolder {
  readonly pid: number;
  readonly hostname: string;
  /** When the holder process started (ISO 8601). */
  readonly since: string;
  /** Linux: the kernel's boot ID, which containers share with their host. */
  readonly bootId?: string;
  /** Linux: the holder's PID namespace (`pid:[4026531836]`); PIDs mean something only within one. */
  readonly pidNamespace?: string;
  /** Linux: the holder's start time in clock ticks after boot, which tells a reused PID. */
  readonly processStart?: string;
}

/** How the holder's PID is checked; a parameter so tests can stand in for the system. */
export interface ProcessProbe {
  isRunning(pid: number): boolean;
  /** The start time of `pid` as {@link LockHolder.processStart} records it, when known. */
  startOf(pid: number): string | undefined;
}

export type LockVerdict =
  | { readonly held: true }
  | { readonly held: false; readonly reason: string };

export interface DataDirLock {
  readonly file: string;
  /** Deletes the lock file (when still this process's) and stops refreshing it. */
  release(): Promise<void>;
}

type LockLogger = Pick<Logger, "warn" | "error">;

export interface LockOptions {
  readonly logger?: LockLogger;
  readonly probe?: ProcessProbe;
  /** This process as the lock records it (default: the real one). */
  readonly self?: LockHolder;
}

/**
 * Lock files this process holds. A process is one holder however many times
 * it opens a directory, so a second open in the same process must be refused
 * here: by the file alone it would look like our own stale lock.
 */
const heldHere = new Set<string>();

/** Takes `dir`'s lock, or throws a {@link StartupError} naming the holder. `dir` must exist. */
export async function acquireDataDirLock(
  dir: string,
  options: LockOptions = {},
): Promise<DataDirLock> {
  const file = join(dir, LOCK_FILE);
  const key = resolve(file);
  if (heldHere.has(key)) throw new StartupError(`DATA_DIR=${dir} is already open in this process`);
  heldHere.add(key);
  try {
    const self = options.self ?? thisProcess();
    const probe = options.probe ?? systemProbe;
    // Each round either creates the file or finds a holder; a stale one is
    // moved aside and the next round tries again. Only processes racing to
    // take over one directory need more than two.
    for (let round = 0; round < 5; round++) {
      const handle = await createExclusive(file, dir);
      if (handle !== undefined) return await hold(handle, file, key, dir, self, options.logger);
      const found = await inspect(file, dir);
      if (found === undefined) continue;
      const verdict = judgeLock(found.holder, self, found.refreshedAgoMs, probe);
      if (verdict.held) throw inUse(dir, file, found, self);
      await takeOver(file, found, dir, verdict.reason, options.logger);
    }
    throw new StartupError(
      `DATA_DIR=${dir}: its lock ${file} keeps changing hands (other cadenza processes are starting on it); start one at a time`,
    );
  } catch (err) {
    heldHere.delete(key);
    throw err;
  }
}

/**
 * For start-up checks, before anything is opened: why `dir` cannot be used
 * (not a writable directory, or held by a live process), or undefined. It
 * creates nothing; {@link acquireDataDirLock} takes the lock when PGlite opens.
 */
export async function checkDataDir(
  dir: string,
  options: Omit<LockOptions, "logger"> = {},
): Promise<StartupError | undefined> {
  try {
    await nearestDirIsWritable(dir);
    const file = join(dir, LOCK_FILE);
    const found = await inspect(file, dir);
    if (found === undefined) return undefined;
    const self = options.self ?? thisProcess();
    const verdict = judgeLock(
      found.holder,
      self,
      found.refreshedAgoMs,
      options.probe ?? systemProbe,
    );
    return verdict.held ? inUse(dir, file, found, self) : undefined;
  } catch (err) {
    const problem = err instanceof StartupError ? err : dataDirProblem(dir, err);
    if (problem === undefined) throw err;
    return problem;
  }
}

/** Whether the lock found is still held by a live holder, and why not when it is not. */
export function judgeLock(
  holder: LockHolder | undefined,
  self: LockHolder,
  refreshedAgoMs: number,
  probe: ProcessProbe,
): LockVerdict {
  if (holder !== undefined && canSeeProcessesOf(holder, self)) {
    if (holder.pid === self.pid) {
      return stale(`its PID ${holder.pid} is now this process's own, so its holder has gone`);
    }
    if (!probe.isRunning(holder.pid)) return stale(`process ${holder.pid} is no longer running`);
    const start = probe.startOf(holder.pid);
    if (holder.processStart !== undefined && start !== undefined && start !== holder.processStart) {
      return stale(`PID ${holder.pid} now belongs to another process`);
    }
    return { held: true };
  }
  if (refreshedAgoMs > STALE_AFTER_MS) {
    const ago = Math.round(refreshedAgoMs / 1000);
    return stale(
      holder === undefined
        ? `the lock file is unreadable and ${ago} s old`
        : `its holder, in another container or on another host, has not refreshed it for ${ago} s`,
    );
  }
  return { held: true };
}

const stale = (reason: string): LockVerdict => ({ held: false, reason });

/** Whether `holder`'s PID can be checked from here: the same kernel boot and PID namespace. */
function canSeeProcessesOf(holder: LockHolder, self: LockHolder): boolean {
  const known = (h: LockHolder) => h.bootId !== undefined && h.pidNamespace !== undefined;
  if (known(holder) && known(self)) {
    return holder.bootId === self.bootId && holder.pidNamespace === self.pidNamespace;
  }
  return holder.hostname === self.hostname;
}

/**
 * The one line for a data directory that cannot be used, naming DATA_DIR and
 * what to do; undefined for an error that is not about the directory.
 */
export function dataDirProblem(dir: string, err: unknown): StartupError | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const uid = process.getuid?.();
  switch (code) {
    case "EACCES":
    case "EPERM":
      return new StartupError(
        `DATA_DIR=${dir} is not writable by this user${uid === undefined ? "" : ` (uid ${uid})`} (${code}): give the directory to the user cadenza runs as, or choose another DATA_DIR`,
        { cause: err },
      );
    case "EROFS":
      return new StartupError(
        `DATA_DIR=${dir} is on a read-only file system (EROFS): mount it read-write, or choose another DATA_DIR`,
        { cause: err },
      );
    case "ENOTDIR":
    case "EEXIST":
      return new StartupError(
        `DATA_DIR=${dir} is not a directory (${code}): a file is in the way; choose another DATA_DIR`,
        { cause: err },
      );
    case "ENOSPC":
    case "EDQUOT":
      return new StartupError(
        `DATA_DIR=${dir}: no space left on its file system (${code}); free some, or choose another DATA_DIR`,
        { cause: err, exitCode: 1 },
      );
    default:
      return undefined;
  }
}

/** `dir`, or the nearest folder above it that exists, is a directory this user can write to. */
async function nearestDirIsWritable(dir: string): Promise<void> {
  let path = resolve(dir);
  for (;;) {
    try {
      if (!(await stat(path)).isDirectory()) {
        throw Object.assign(new Error(`${path} is not a directory`), { code: "ENOTDIR" });
      }
      await access(path, constants.W_OK | constants.X_OK);
      return;
    } catch (err) {
      const parent = dirname(path);
      if ((err as NodeJS.ErrnoException).code !== "ENOENT" || parent === path) throw err;
      path = parent;
    }
  }
}

/** The lock file opened for writing if this call created it, or undefined if it exists. */
async function createExclusive(file: string, dir: string): Promise<FileHandle | undefined> {
  try {
    return await open(file, "wx", 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return undefined;
    throw dataDirProblem(dir, err) ?? err;
  }
}

async function hold(
  handle: FileHandle,
  file: string,
  key: string,
  dir: string,
  self: LockHolder,
  logger: LockLogger | undefined,
): Promise<DataDirLock> {
  let ino: number;
  try {
    await handle.writeFile(`${JSON.stringify({ program: "cadenza", ...self })}\n`);
    await handle.sync();
    ino = (await handle.stat()).ino;
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(file).catch(() => {});
    throw dataDirProblem(dir, err) ?? err;
  }
  // While our handle is open the inode cannot be reused, so the same inode
  // at the path means the file is still ours.
  const isOurs = async () => (await stat(file).catch(() => undefined))?.ino === ino;
  let warned = false;
  const refresh = async (): Promise<void> => {
    if (!(await isOurs())) {
      if (!warned) {
        warned = true;
        logger?.error(
          { dataDir: dir, lockFile: file },
          `DATA_DIR=${dir}: the lock file was removed or taken by another process; stop every other process using this directory, then restart this one`,
        );
      }
      return;
    }
    const now = new Date();
    await handle.utimes(now, now);
  };
  const timer = setInterval(() => {
    refresh().catch((err: unknown) =>
      logger?.warn({ err, lockFile: file }, "could not refresh the DATA_DIR lock"),
    );
  }, REFRESH_MS).unref();
  const onExit = (): void => {
    try {
      if (statSync(file).ino === ino) unlinkSync(file);
    } catch {
      // gone already
    }
  };
  process.on("exit", onExit);
  let released: Promise<void> | undefined;
  return {
    file,
    release() {
      released ??= (async () => {
        clearInterval(timer);
        process.off("exit", onExit);
        if (await isOurs()) await unlink(file).catch(() => {});
        await handle.close();
        heldHere.delete(key);
      })();
      return released;
    },
  };
}

interface Found {
  readonly text: string;
  readonly holder: LockHolder | undefined;
  readonly ino: number;
  readonly refreshedAgoMs: number;
}

/** The lock file at `file` and what it says, or undefined when there is none. */
async function inspect(file: string, dir: string): Promise<Found | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(file, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw dataDirProblem(dir, err) ?? err;
  }
  try {
    const info = await handle.stat();
    const text = await handle.readFile("utf8");
    return {
      text,
      holder: parseHolder(text),
      ino: info.ino,
      refreshedAgoMs: Math.max(0, Date.now() - info.mtimeMs),
    };
  } finally {
    await handle.close();
  }
}

/** The holder a lock file names, or undefined for one half written or not cadenza's. */
export function parseHolder(text: string): LockHolder | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const v = value as Record<string, unknown>;
  if (!Number.isSafeInteger(v.pid) || typeof v.hostname !== "string") return undefined;
  if (typeof v.since !== "string") return undefined;
  const optional = (name: string) =>
    typeof v[name] === "string" ? { [name]: v[name] as string } : {};
  return {
    pid: v.pid as number,
    hostname: v.hostname,
    since: v.since,
    ...optional("bootId"),
    ...optional("pidNamespace"),
    ...optional("processStart"),
  };
}

/**
 * Moves a stale lock aside and deletes it. Two processes may find one stale
 * lock together: the rename lets only one move it, and if what was moved is
 * no longer the file judged stale (the other already replaced it with its
 * own), it is put back.
 */
async function takeOver(
  file: string,
  found: Found,
  dir: string,
  reason: string,
  logger: LockLogger | undefined,
): Promise<void> {
  const aside = `${file}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    await rename(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw dataDirProblem(dir, err) ?? err;
  }
  const moved = await inspect(aside, dir);
  if (moved !== undefined && (moved.ino !== found.ino || moved.text !== found.text)) {
    // If a third process has created a lock meanwhile, this one cannot go
    // back; its holder's refresh then reports that it lost its lock.
    await link(aside, file).catch(() => {});
    await unlink(aside).catch(() => {});
    return;
  }
  await unlink(aside).catch(() => {});
  logger?.warn(
    { dataDir: dir, holder: found.holder, reason },
    `DATA_DIR=${dir}: took over the lock left by ${holderName(found.holder)}: ${reason}`,
  );
}

function holderName(holder: LockHolder | undefined): string {
  return holder === undefined
    ? "an unknown process (its lock file is unreadable)"
    : `cadenza process ${holder.pid} on host ${holder.hostname} since ${holder.since}`;
}

function inUse(dir: string, file: string, found: Found, self: LockHolder): StartupError {
  const seen =
    found.holder !== undefined && canSeeProcessesOf(found.holder, self)
      ? ""
      : `, last seen ${Math.round(found.refreshedAgoMs / 1000)} s ago (if it is gone, its lock is taken over once ${STALE_AFTER_MS / 1000} s old)`;
  return new StartupError(
    `DATA_DIR=${dir} is in use by ${holderName(found.holder)}${seen}; stop it first: embedded PGlite allows one process per data directory, the CLI included (lock file ${file}; several processes need Postgres, DATABASE_URL)`,
  );
}

/** This process as a lock file records it. */
export function thisProcess(): LockHolder {
  const bootId = readProc("/proc/sys/kernel/random/boot_id");
  const processStart = processStartOf("self");
  let pidNamespace: string | undefined;
  try {
    pidNamespace = readlinkSync("/proc/self/ns/pid");
  } catch {
    // not Linux, or /proc is not mounted
  }
  return {
    pid: process.pid,
    hostname: hostname(),
    since: new Date(Date.now() - process.uptime() * 1000).toISOString(),
    ...(bootId === undefined ? {} : { bootId }),
    ...(pidNamespace === undefined ? {} : { pidNamespace }),
    ...(processStart === undefined ? {} : { processStart }),
  };
}

const systemProbe: ProcessProbe = {
  isRunning(pid) {
    try {
      process.kill(pid, 0);
    } catch (err) {
      // EPERM: it runs, as another user.
      return (err as NodeJS.ErrnoException).code === "EPERM";
    }
    // A zombie (killed, not yet reaped by its parent) still answers kill(0).
    const state = procStat(String(pid))?.[0];
    return state !== "Z" && state !== "X";
  },
  startOf: (pid) => processStartOf(String(pid)),
};

/** Field 22 of /proc/<pid>/stat: the process's start time. */
function processStartOf(pid: string): string | undefined {
  return procStat(pid)?.[19];
}

/** The fields of /proc/<pid>/stat from the third (the state) on, after the command name, which may hold spaces and parentheses. */
function procStat(pid: string): string[] | undefined {
  const line = readProc(`/proc/${pid}/stat`);
  return line?.slice(line.lastIndexOf(")") + 2).split(" ");
}

function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}
