import { defineConfig, type TestProjectInlineConfiguration } from "vitest/config";

/**
 * The suite in four projects, by what a file's tests need, each with the
 * timeouts that fit it (a test that needs longer says so itself). They run
 * side by side in one pool of two workers: the machines have two cores,
 * and PGlite and argon2 are CPU-bound. `npx vitest run --project unit` is the
 * quick loop.
 *
 * - unit: pure logic, parsers and fakes; no database.
 * - in-process: cadenza's handlers in memory (createRouterTransport), on a
 *   database, PGlite and Postgres.
 * - network: real servers on loopback in this process, port 0, with real
 *   clients.
 * - processes: files that start other processes (cadenza itself, its CLI,
 *   initdb, Caddy, PgBouncer, Chromium), which take seconds each.
 *
 * Each project's workers run its files one after another without a fresh
 * module graph (isolate: false), so src/ and the libraries are loaded once
 * per worker rather than once per file (~1.5 s each, a third of the suite's
 * CPU): every file closes what it opens and puts back what it changes (the
 * umask, process listeners). A file not listed is a network one.
 */
const unit = [
  "account-rules",
  "config",
  "data-dir-lock",
  "database-url",
  "db-failures",
  "flow-machine",
  "hrpc-errors",
  "mailer",
  "password-hasher",
  "server-ids",
  "setting-lookalikes",
  "startup-problems",
  "wire-format",
];
const inProcess = [
  "admin",
  "auth-flow",
  "homeserver",
  "lifecycle",
  "passkeys",
  "second-factor",
  "server-keys",
  "web-steps",
];
const processes = [
  "faults",
  "pgbouncer",
  "pglite-files",
  "processes",
  "proxy",
  "resource",
  "startup",
  "startup-checks",
  "web-browser",
  "web-passkey",
];
const files = (names: readonly string[]) => names.map((n) => `test/${n}.test.ts`);

function project(
  name: string,
  test: NonNullable<TestProjectInlineConfiguration["test"]>,
): TestProjectInlineConfiguration {
  return { test: { name, pool: "forks", isolate: false, ...test } };
}

export default defineConfig({
  test: {
    // Once per run, for every project: the migrated PGlite template and the
    // JavaScript copy of src/ that spawned processes run.
    globalSetup: ["test/helpers/global-setup.ts"],
    maxWorkers: 2,
    projects: [
      project("unit", {
        include: files(unit),
        testTimeout: 5_000,
        hookTimeout: 10_000,
      }),
      project("in-process", {
        include: files(inProcess),
        testTimeout: 15_000,
        hookTimeout: 30_000,
      }),
      project("network", {
        include: ["test/**/*.test.ts"],
        exclude: files([...unit, ...inProcess, ...processes]),
        testTimeout: 15_000,
        hookTimeout: 30_000,
      }),
      project("processes", {
        include: files(processes),
        testTimeout: 60_000,
        hookTimeout: 60_000,
      }),
    ],
  },
});
