import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { onFreePort } from "./server.js";

/** `pgbouncer --version`'s first line when a pgbouncer binary is on PATH, else undefined. */
export function pgbouncerVersion(): string | undefined {
  const run = spawnSync("pgbouncer", ["--version"], { encoding: "utf8" });
  return run.status === 0 ? run.stdout.split("\n")[0]?.trim() : undefined;
}

export interface PgbouncerOptions {
  /** The Postgres database to pool, as a postgres:// URL (its host, port, user, password, name). */
  readonly upstream: string;
  /** PgBouncer's `pool_mode`. */
  readonly poolMode: "session" | "transaction";
  /** Server connections per database and user (`default_pool_size`). */
  readonly poolSize: number;
  /** `ignore_startup_parameters`: startup parameters accepted and dropped. */
  readonly ignoreStartupParameters?: readonly string[];
}

export interface PgbouncerProcess {
  readonly port: number;
  /** A postgres:// URL for the pooled database through PgBouncer. */
  readonly url: string;
  /** The admin console (`SHOW POOLS`, `SHOW STATS`), as the upstream user. */
  readonly adminUrl: string;
  readonly child: ChildProcess;
  /** Everything PgBouncer logged so far (it logs to stderr). */
  log(): string;
  /**
   * Resolves once PgBouncer logs a line matching `pattern` after `since` (a
   * `log().length` taken earlier); rejects if it exits or `withinMs` passes first.
   */
  waitForLog(pattern: RegExp, since: number, withinMs: number): Promise<void>;
  /** SIGTERM (PgBouncer's fast shutdown), then SIGKILL if it has not exited within a few seconds. */
  stop(): Promise<void>;
}

/**
 * The config file: one database (the upstream one), trust authentication on
 * loopback, logs on stderr, no pidfile and no Unix socket, so runs never
 * collide on a path.
 */
function renderConfig(options: PgbouncerOptions, port: number, authFile: string): string {
  const up = new URL(options.upstream);
  const database = decodeURIComponent(up.pathname.slice(1));
  const user = decodeURIComponent(up.username);
  const server = [
    `host=${up.hostname}`,
    `port=${up.port || "5432"}`,
    `dbname=${database}`,
    `user=${user}`,
    ...(up.password === "" ? [] : [`password=${decodeURIComponent(up.password)}`]),
  ].join(" ");
  return [
    "[databases]",
    `${database} = ${server}`,
    "",
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    `listen_port = ${port}`,
    "unix_socket_dir =",
    "logfile =",
    "pidfile =",
    "auth_type = trust",
    `auth_file = ${authFile}`,
    `admin_users = ${user}`,
    `pool_mode = ${options.poolMode}`,
    `default_pool_size = ${options.poolSize}`,
    "max_client_conn = 200",
    ...(options.ignoreStartupParameters?.length
      ? [`ignore_startup_parameters = ${options.ignoreStartupParameters.join(",")}`]
      : []),
    "",
  ].join("\n");
}

/**
 * Runs Debian's `pgbouncer` in the foreground on a free loopback port with a
 * config rendered into a temporary directory, and resolves once it logs that
 * it listens. PgBouncer refuses to run as root ("PgBouncer should not run as
 * root"), so as root it is started with `-u nobody`, which it switches to
 * itself; the directory is then made readable by that user.
 */
export function startPgbouncer(
  options: PgbouncerOptions,
  readyWithinMs = 10_000,
): Promise<PgbouncerProcess> {
  // Its config file gives it its port.
  return onFreePort((port) => startPgbouncerOn(port, options, readyWithinMs));
}

async function startPgbouncerOn(
  port: number,
  options: PgbouncerOptions,
  readyWithinMs: number,
): Promise<PgbouncerProcess> {
  const dir = mkdtempSync(join(tmpdir(), "cadenza-pgbouncer-"));
  const asRoot = process.getuid?.() === 0;
  const up = new URL(options.upstream);
  const authFile = join(dir, "users.txt");
  // With auth_type = trust the user must still be listed; the password is not checked.
  writeFileSync(authFile, `"${decodeURIComponent(up.username)}" ""\n`);
  const configFile = join(dir, "pgbouncer.ini");
  writeFileSync(configFile, renderConfig(options, port, authFile));
  if (asRoot) {
    chmodSync(dir, 0o755);
    chmodSync(authFile, 0o644);
    chmodSync(configFile, 0o644);
  }
  const child = spawn("pgbouncer", [...(asRoot ? ["-u", "nobody"] : []), configFile], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const waiters = new Set<() => void>();
  const collect = (d: Buffer) => {
    output += d.toString();
    for (const check of waiters) check();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  // A spawn failure (no binary) is an "error" event instead: it ends the waits the same way.
  const exited = once(child, "exit").catch((err: unknown) => {
    output += `${String(err)}\n`;
    return [null];
  });
  let exitCode: number | null | undefined;
  void exited.then(([code]) => {
    exitCode = code as number | null;
    for (const check of waiters) check();
  });

  const waitForLog = (pattern: RegExp, since: number, withinMs: number): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (pattern.test(output.slice(since))) finish();
        else if (exitCode !== undefined) {
          finish(new Error(`pgbouncer exited with ${exitCode}:\n${output}`));
        }
      };
      const timer = setTimeout(
        () =>
          finish(new Error(`pgbouncer did not log ${pattern} within ${withinMs} ms:\n${output}`)),
        withinMs,
      );
      const finish = (err?: Error): void => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve();
      };
      waiters.add(check);
      check();
    });

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    await waitForLog(new RegExp(`listening on 127\\.0\\.0\\.1:${port}\\b`), 0, readyWithinMs);
  } catch (err) {
    await stop();
    throw err;
  }
  const pooled = new URL(options.upstream);
  pooled.hostname = "127.0.0.1";
  pooled.port = String(port);
  pooled.password = "";
  const admin = new URL(pooled);
  admin.pathname = "/pgbouncer";
  return {
    port,
    url: pooled.toString(),
    adminUrl: admin.toString(),
    child,
    log: () => output,
    waitForLog,
    stop,
  };
}
