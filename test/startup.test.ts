import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { migratedDataDir, postgresBackend, type TestDatabase } from "./helpers/databases.js";
import { fakePostgres } from "./helpers/fake-postgres.js";
import {
  runCli,
  runServerToExit,
  type ServerProcess,
  startServerProcess,
} from "./helpers/process.js";
import { transportFactory } from "./helpers/server.js";

/**
 * How long a start-up that fails its checks may take: loading src/main.ts
 * (a second or two on these shared two-core machines) and the checks
 * themselves, which wait on nothing slow here.
 */
const FAIL_MS = 20_000;
/** How long startServerProcess waits for a server to listen (PGlite's initdb included). */
const START_MS = 30_000;

const dirs: string[] = [];
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "cadenza-startup-"));
  dirs.push(dir);
  return dir;
};
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A port some other process (this test) is listening on. */
async function takenPort(): Promise<number> {
  const server: Server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  cleanups.push(() => new Promise((resolve) => server.close(() => resolve())));
  return (server.address() as { port: number }).port;
}

/** The lines a failed start printed on stderr. */
const linesOf = (stderr: string) => stderr.split("\n").filter((l) => l !== "");

describe("a start-up that cannot succeed stops with one line naming the setting", () => {
  it.each<[string, () => Promise<Record<string, string>>, number, RegExp]>([
    [
      "TLS_CERT missing",
      async () => ({ TLS_CERT: join(tempDir(), "cert.pem"), TLS_KEY: join(tempDir(), "key.pem") }),
      2,
      /^TLS_CERT=\S+cert\.pem does not exist: .*\nTLS_KEY=\S+key\.pem does not exist/,
    ],
    [
      "INTERNAL_PORT in use",
      async () => ({ INTERNAL_PORT: String(await takenPort()), DATA_DIR: "memory://" }),
      2,
      /^INTERNAL_PORT=\d+ on INTERNAL_HOST=127\.0\.0\.1 is in use \(EADDRINUSE\): .*choose another INTERNAL_PORT$/,
    ],
    [
      "DATA_DIR not a directory",
      async () => {
        const file = join(tempDir(), "file");
        writeFileSync(file, "");
        return { DATA_DIR: join(file, "data") };
      },
      2,
      /^DATA_DIR=\S+ is not a directory \(ENOTDIR\): a file is in the way; choose another DATA_DIR$/,
    ],
    [
      "DATABASE_URL host not found",
      async () => ({ DATABASE_URL: "postgres://cadenza:s3cret@no-such-host.invalid/cadenza" }),
      2,
      /^DATABASE_URL=postgres:\/\/cadenza:\*\*\*@no-such-host\.invalid\/cadenza: host no-such-host\.invalid not found \(ENOTFOUND\)/,
    ],
    [
      "DATABASE_URL refused",
      async () => {
        const { freePort } = await import("./helpers/server.js");
        return { DATABASE_URL: `postgres://cadenza:s3cret@127.0.0.1:${await freePort()}/cadenza` };
      },
      1,
      /^DATABASE_URL=\S+: connection to 127\.0\.0\.1:\d+ refused \(ECONNREFUSED\)/,
    ],
    [
      "DATABASE_URL authentication failed",
      async () => {
        const server = await fakePostgres({
          refuse: {
            sqlstate: "28P01",
            message: 'password authentication failed for user "cadenza"',
          },
        });
        cleanups.push(() => server.close());
        return { DATABASE_URL: server.url("cadenza", "s3cret") };
      },
      2,
      /^DATABASE_URL=postgres:\/\/cadenza:\*\*\*@127\.0\.0\.1:\d+\/cadenza: authentication failed for user "cadenza"/,
    ],
  ])(
    "%s",
    async (_, envFor, exitCode, pattern) => {
      const { code, stderr } = await runServerToExit(await envFor(), FAIL_MS);
      expect(code).toBe(exitCode);
      const lines = linesOf(stderr);
      expect(lines.every((l) => l.startsWith("cadenza: cannot start: "))).toBe(true);
      expect(lines.map((l) => l.slice("cadenza: cannot start: ".length)).join("\n")).toMatch(
        pattern,
      );
      expect(stderr).not.toMatch(/s3cret|\[object Object\]|\n\s+at /);
    },
    FAIL_MS + 5_000,
  );

  it(
    "PORT in use, on a fresh DATA_DIR: nothing written, and a misspelt variable is warned about",
    async () => {
      const dataDir = join(tempDir(), "data");
      const port = await takenPort();
      const { code, stdout, stderr } = await runServerToExit(
        { PORT: String(port), DATA_DIR: dataDir, FEDERATON_ALLOW: "a.example.org:2289" },
        FAIL_MS,
      );
      expect(code).toBe(2);
      expect(linesOf(stderr)).toEqual([
        `cadenza: cannot start: PORT=${port} on HOST=127.0.0.1 is in use (EADDRINUSE): another process listens there; stop it, or choose another PORT`,
      ]);
      expect(existsSync(dataDir)).toBe(false);
      const warnings = stdout.split("\n").filter((l) => l.includes("not a cadenza setting"));
      expect(warnings.map((l) => JSON.parse(l).msg)).toEqual([
        "FEDERATON_ALLOW is not a cadenza setting; did you mean FEDERATION_ALLOW?",
      ]);
    },
    FAIL_MS + 5_000,
  );
});

describe.skipIf(postgresBackend === undefined)("on Postgres", () => {
  let database: TestDatabase | undefined;
  afterAll(async () => {
    await database?.close();
  });

  it(
    "PORT in use: the database is not migrated",
    async () => {
      database = await (postgresBackend as NonNullable<typeof postgresBackend>).open({
        migrate: false,
      });
      const port = await takenPort();
      const url = database.url ?? "";
      const { code, stderr } = await runServerToExit(
        { PORT: String(port), DATABASE_URL: url },
        FAIL_MS,
      );
      expect(code).toBe(2);
      expect(linesOf(stderr)).toEqual([
        expect.stringMatching(
          new RegExp(`^cadenza: cannot start: PORT=${port} on HOST=127.0.0.1 is in use`),
        ),
      ]);
      const { rows } = await database.db.query<{ t: string | null }>(
        "SELECT to_regclass('schema_migrations')::text AS t",
      );
      expect(rows).toEqual([{ t: null }]);
    },
    FAIL_MS + 10_000,
  );

  it(
    "a database that does not exist, for the server and the CLI",
    async () => {
      const url = new URL(process.env.TEST_DATABASE_URL ?? "");
      url.pathname = "/cad_startup_no_such_database";
      const env = { DATABASE_URL: url.toString() };
      const [server, cli] = await Promise.all([
        runServerToExit(env, FAIL_MS),
        runCli(["migrate"], env),
      ]);
      const expected = `DATABASE_URL=${url}: database "cad_startup_no_such_database" does not exist on 127.0.0.1:5432 (3D000): create it (createdb cad_startup_no_such_database), or fix the name`;
      expect([server.code, linesOf(server.stderr)]).toEqual([
        2,
        [`cadenza: cannot start: ${expected}`],
      ]);
      expect([cli.code, linesOf(cli.stderr)]).toEqual([
        2,
        [`cadenza: cannot run migrate: ${expected}`],
      ]);
    },
    FAIL_MS + 5_000,
  );
});

describe("one process per PGlite DATA_DIR", () => {
  const transports = transportFactory();
  const running: ServerProcess[] = [];
  afterAll(async () => {
    transports.closeAll();
    await Promise.all(running.map((p) => p.stop()));
  });

  it(
    "refuses a second server and the CLI while one runs, and is taken over after a kill -9",
    async () => {
      // Made already: initdb's first start is test/processes.test.ts's.
      const dataDir = migratedDataDir(join(tempDir(), "data"));
      const first = await startServerProcess({ DATA_DIR: dataDir });
      running.push(first);
      const pid = first.child.pid ?? 0;
      const key = async (p: ServerProcess) =>
        Buffer.from(
          (await createClient(AuthService, transports.create("connect-json/http1", p.url)).key({}))
            .key,
        ).toString("base64");
      const before = await key(first);

      const held = new RegExp(
        `^DATA_DIR=${dataDir} is in use by cadenza process ${pid} on host \\S+ since \\S+; stop it first`,
      );
      const [second, migrating] = await Promise.all([
        runServerToExit({ DATA_DIR: dataDir }, FAIL_MS),
        runCli(["migrate"], { DATA_DIR: dataDir }),
      ]);
      expect(second.code).toBe(2);
      expect(linesOf(second.stderr)).toEqual([expect.stringMatching(/^cadenza: cannot start: /)]);
      expect(linesOf(second.stderr)[0]?.slice("cadenza: cannot start: ".length)).toMatch(held);
      expect(migrating.code).toBe(2);
      expect(migrating.stdout).toBe("");
      expect(linesOf(migrating.stderr)).toEqual([
        expect.stringMatching(/^cadenza: cannot run migrate: /),
      ]);
      expect(linesOf(migrating.stderr)[0]?.slice("cadenza: cannot run migrate: ".length)).toMatch(
        held,
      );
      expect(await key(first)).toBe(before);
      // The CLI's other commands go through the running server's admin API:
      // a rotation is the server's own, and is kept (it was lost before).
      const rotate = await runCli(["key", "rotate", "--server", first.internalUrl], {
        DATA_DIR: dataDir,
      });
      expect(rotate.code).toBe(0);
      const rotated = await key(first);
      expect(rotated).not.toBe(before);
      expect(rotate.stdout).toContain(rotated);

      const exited = once(first.child, "exit");
      first.child.kill("SIGKILL");
      await exited;
      expect(JSON.parse(readFileSync(join(dataDir, "cadenza.lock"), "utf8")).pid).toBe(pid);
      const next = await startServerProcess({ DATA_DIR: dataDir });
      running.push(next);
      expect(next.logs.map((l) => l.msg)).toContainEqual(
        expect.stringMatching(
          new RegExp(
            `took over the lock left by cadenza process ${pid} .*: process ${pid} is no longer running`,
          ),
        ),
      );
      expect(await key(next)).toBe(rotated);
      expect(await next.stop()).toBe(0);
      expect(existsSync(join(dataDir, "cadenza.lock"))).toBe(false);
    },
    // Two servers started (PGlite's initdb once), and a server and the CLI that fail.
    2 * START_MS + FAIL_MS,
  );
});
