import { randomBytes } from "node:crypto";
import { Code, createClient } from "@connectrpc/connect";
import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256 } from "../src/auth/random-ids.js";
import { ConfigError, loadConfig } from "../src/config.js";
import type { Database } from "../src/db/database.js";
import { createPostgresDatabase } from "../src/db/postgres.js";
import type { AuthStep } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { createRateLimits } from "../src/limits/rate-limits.js";
import { expectRpcError } from "./helpers/errors.js";
import { bytes, choose, newUser, register, submitForm, text } from "./helpers/flow.js";
import { type PgbouncerProcess, pgbouncerVersion, startPgbouncer } from "./helpers/pgbouncer.js";
import { runCli, type ServerProcess, startServerProcess } from "./helpers/process.js";
import { transportFactory } from "./helpers/server.js";

/*
 * Replicas behind Debian's PgBouncer in transaction mode: DATABASE_URL through
 * the pooler, DATABASE_LISTEN_URL direct to Postgres. The pooler gets two
 * server connections for the twenty client connections of two replicas, so
 * any statement that leaned on session state would meet another client's
 * session.
 */

const version = pgbouncerVersion();
const adminUrl = process.env.TEST_DATABASE_URL?.trim() || undefined;
const skipped =
  version === undefined
    ? "no pgbouncer binary on PATH (.ci/run installs Debian's pgbouncer package)"
    : adminUrl === undefined
      ? "TEST_DATABASE_URL is not set"
      : undefined;
if (skipped !== undefined) {
  // CI installs pgbouncer and sets TEST_DATABASE_URL; there a skip fails the run instead.
  if (process.env.CI) throw new Error(`test/pgbouncer.test.ts would be skipped: ${skipped}`);
  console.warn(`test/pgbouncer.test.ts: the PgBouncer tests are skipped: ${skipped}`);
}

/** How long any one thing may take: a step reaching a stream, a deletion reaching a cache. */
const WAIT_MS = 5_000;
/** PgBouncer's server connections for the database: fewer than the replicas' clients. */
const SERVER_CONNECTIONS = 2;
/** What a replica spends on argon2id here: the test is about the database. */
const cheapArgon2 = { ARGON2_MEMORY_KIB: "64", ARGON2_ITERATIONS: "1" };

/** Polls `check` until it holds, for at most `withinMs`; resolves with whether it did. */
async function until(check: () => Promise<boolean>, withinMs = WAIT_MS): Promise<boolean> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** `promise`, or a rejection naming `what` if it has not settled within `withinMs`. */
async function within<T>(promise: Promise<T>, what: string, withinMs = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`waited ${withinMs} ms for ${what}`)), withinMs);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves with the first value `register` is handed, or rejects after `withinMs`. */
function first<T>(register: (deliver: (value: T) => void) => void, withinMs = WAIT_MS) {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nothing within ${withinMs} ms`)), withinMs);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

/** Runs one statement on a connection of its own (the admin console speaks only simple queries). */
async function runSql<R extends pg.QueryResultRow>(url: string, sql: string, params?: unknown[]) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

const silent = pino({ level: "silent" });

describe("DATABASE_LISTEN_URL", () => {
  it("defaults to DATABASE_URL, takes its own value, and needs DATABASE_URL", () => {
    expect(loadConfig({ DATABASE_URL: "postgres://u@db/cadenza" }).databaseListenUrl).toBe(
      "postgres://u@db/cadenza",
    );
    expect(loadConfig({}).databaseListenUrl).toBeUndefined();
    const both = loadConfig({
      DATABASE_URL: "postgres://u@pgbouncer:6432/cadenza",
      DATABASE_LISTEN_URL: "postgres://u@db:5432/cadenza",
    });
    expect(both).toMatchObject({
      databaseUrl: "postgres://u@pgbouncer:6432/cadenza",
      databaseListenUrl: "postgres://u@db:5432/cadenza",
    });
    expect(() => loadConfig({ DATABASE_LISTEN_URL: "postgres://u@db/cadenza" })).toThrow(
      /DATABASE_LISTEN_URL is set but DATABASE_URL is not/,
    );
    expect(() =>
      loadConfig({ DATABASE_URL: "postgres://u@db/c", DATABASE_LISTEN_URL: "mysql://x" }),
    ).toThrow(ConfigError);
  });
});

describe("named prepared statements", () => {
  it("are never sent: rate-limiter-flexible names its queries, cadenza's adapter passes only text and values", async () => {
    const calls: unknown[][] = [];
    const db = {
      kind: "postgres",
      async query(...args: unknown[]) {
        calls.push(args);
        return { rows: [{ points: 1, expire: null }], rowCount: 1 };
      },
    } as unknown as Database;
    const limits = createRateLimits({
      db,
      config: {
        beginAuth: { points: 5, durationMs: 60_000 },
        forms: undefined,
        registrations: undefined,
        loginFederated: undefined,
        federate: undefined,
        emailsPerAccount: undefined,
        emailsPerAddress: undefined,
      },
    });
    await limits.consume("beginAuth", "192.0.2.1");
    expect(calls).toHaveLength(1);
    // (sql, params): no third argument and no query object that could carry a `name`.
    expect(calls[0]).toEqual([expect.stringContaining("INSERT INTO"), expect.any(Array)]);
  });
});

describe.skipIf(skipped !== undefined)("replicas behind PgBouncer in transaction mode", () => {
  const admin = adminUrl ?? "";
  const name = `cadenza_pgb_${randomBytes(5).toString("hex")}`;
  /** The test's database, straight to Postgres (set in beforeAll: the body runs even when skipped). */
  let direct: string;
  const transports = transportFactory();
  const running: ServerProcess[] = [];
  const bouncers: PgbouncerProcess[] = [];
  let bouncer: PgbouncerProcess;

  beforeAll(async () => {
    const url = new URL(admin);
    url.pathname = `/${name}`;
    url.search = "";
    direct = url.toString();
    // A database of its own: PgBouncer refuses the `options` startup parameter
    // that a schema's search_path would need (postgresBackend).
    await runSql(admin, `CREATE DATABASE ${name}`);
    bouncer = await startPgbouncer({
      upstream: direct,
      poolMode: "transaction",
      poolSize: SERVER_CONNECTIONS,
    });
    bouncers.push(bouncer);
  });
  afterAll(async () => {
    transports.closeAll();
    await Promise.all(running.map((p) => p.stop()));
    await Promise.all(bouncers.map((b) => b.stop()));
    await runSql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });

  const start = async (env: Record<string, string>) => {
    const p = await startServerProcess(env);
    running.push(p);
    return p;
  };

  it("two replicas migrate once, a stream on B gets every step made on A, a deleted session is refused by both at once, and registrations on both at once succeed", async () => {
    const env = { DATABASE_URL: bouncer.url, DATABASE_LISTEN_URL: direct, ...cheapArgon2 };
    const [a, b] = await Promise.all([start(env), start(env)]);
    const migrated = [...a.logs, ...b.logs].filter((l) => l.msg === "database migrated");
    expect(migrated).toHaveLength(1);
    const onA = createClient(AuthService, transports.create("connect-json/http1", a.url));
    const onB = createClient(AuthService, transports.create("grpc/http2", b.url));

    // A flow driven on A (and one step back on B), streamed from B.
    const user = newUser();
    const { authId } = await onA.beginAuth({});
    const streamed: AuthStep[] = [];
    const stream = (async () => {
      for await (const res of onB.streamSteps({ authId })) if (res.step) streamed.push(res.step);
    })();
    await onA.nextStep({ authId });
    await choose(onA, authId, "login");
    await onB.stepBack({ authId });
    await choose(onA, authId, "register");
    const done = await submitForm(onA, authId, [
      text(user.email),
      text(user.username),
      bytes(user.password),
    ]);
    await within(stream, "the stream on B to end with the session step");
    expect(
      streamed.map((s) => (s.step.case === "session" ? "session" : s.step.value?.title)),
    ).toEqual(["initial", "login", "initial", "register", "session"]);
    expect(streamed.at(-1)).toEqual(done.step);

    // Both replicas cache the session; deleted through the pooler (as a
    // replica's statement would be), it is refused by both long before
    // their caches would expire it (a minute).
    const token = done.step?.step.case === "session" ? done.step.step.value.sessionToken : "";
    const auth = { headers: { authorization: token } };
    await onA.checkLoggedIn({}, auth);
    await onB.checkLoggedIn({}, auth);
    const deleted = await runSql(
      bouncer.url,
      "DELETE FROM sessions WHERE token_hash = $1 RETURNING 1",
      [sha256(token)],
    );
    expect(deleted).toHaveLength(1);
    for (const client of [onA, onB]) {
      const refused = () =>
        client.checkLoggedIn({}, auth).then(
          () => false,
          () => true,
        );
      expect(await until(refused)).toBe(true);
      await expectRpcError(client.checkLoggedIn({}, auth), Code.Unauthenticated, "h.blank-session");
    }

    // Registrations at once on both, each session good on the other replica.
    const clients = [onA, onB, onA, onB, onA, onB];
    const sessions = await Promise.all(clients.map((c) => register(c, newUser())));
    expect(new Set(sessions.map((s) => s.userId)).size).toBe(clients.length);
    for (const [i, s] of sessions.entries()) {
      const other = clients[i] === onA ? onB : onA;
      await other.checkLoggedIn({}, { headers: { authorization: s.sessionToken } });
    }

    // All of it went through PgBouncer, in transaction mode, on its two server connections.
    const [pool] = await runSql<{ database: string; pool_mode: string }>(
      bouncer.adminUrl,
      "SHOW POOLS",
    ).then((rows) => rows.filter((r) => r.database === name));
    expect(pool?.pool_mode).toBe("transaction");
    const [stats] = await runSql<{ database: string; total_xact_count: string }>(
      bouncer.adminUrl,
      "SHOW STATS",
    ).then((rows) => rows.filter((r) => r.database === name));
    expect(Number(stats?.total_xact_count)).toBeGreaterThan(20);
    const servers = await runSql<{ database: string }>(bouncer.adminUrl, "SHOW SERVERS");
    expect(servers.filter((s) => s.database === name).length).toBeLessThanOrEqual(
      SERVER_CONNECTIONS,
    );
    // And the LISTEN connections went straight to Postgres: five channels per replica.
    const listening = await runSql<{ n: string }>(
      direct,
      "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'",
      [name],
    );
    expect(Number(listening[0]?.n)).toBe(10);

    expect(await a.stop()).toBe(0);
    expect(await b.stop()).toBe(0);
  });

  describe("the database port, through PgBouncer", () => {
    let db: Database;
    const queryTimeoutMs = 4321;
    beforeAll(() => {
      db = createPostgresDatabase({
        connectionString: bouncer.url,
        listenConnectionString: direct,
        poolSize: 4,
        connectTimeoutMs: 5_000,
        queryTimeoutMs,
        logger: silent,
      });
    });
    afterAll(async () => {
      await db?.close();
    });

    it("sets DATABASE_QUERY_TIMEOUT in each transaction with SET LOCAL, and leaves no session state on the server connections", async () => {
      // What a statement outside a transaction gets: the role's and database's own setting.
      const [own] = await runSql<{ t: string }>(
        direct,
        "SELECT current_setting('statement_timeout') AS t",
      );
      const setting = "SELECT current_setting('statement_timeout') AS t";
      for (let i = 0; i < 4; i++) {
        const inside = await db.transaction((tx) => tx.query<{ t: string }>(setting));
        expect(inside.rows[0]?.t).toBe(`${queryTimeoutMs}ms`);
        const outside = await db.query<{ t: string }>(setting);
        expect(outside.rows[0]?.t).toBe(own?.t);
      }
    });

    it("hears a NOTIFY sent through the pooler on its LISTEN connection to Postgres", async () => {
      const channel = `probe_${randomBytes(4).toString("hex")}`;
      let deliver: (payload: string) => void = () => {};
      const heard = first<string>((d) => {
        deliver = d;
      });
      const stop = await db.listen(channel, { message: (payload) => deliver(payload) });
      try {
        await db.transaction((tx) =>
          tx.query("SELECT pg_notify($1, 'through the pooler')", [channel]),
        );
        expect(await heard).toBe("through the pooler");
      } finally {
        await stop();
      }
    });
  });

  describe("without DATABASE_LISTEN_URL", () => {
    it("does not start: PgBouncer refuses the statement_timeout startup parameter pg sends", async () => {
      // `migrate` opens the database as the server does, and migrating is the first thing it does.
      const refused = await runCli(["migrate"], { DATABASE_URL: bouncer.url });
      expect(refused.code).toBe(1);
      expect(refused.stdout).toContain("unsupported startup parameter: statement_timeout");

      const migrated = await runCli(["migrate"], {
        DATABASE_URL: bouncer.url,
        DATABASE_LISTEN_URL: direct,
      });
      expect(migrated).toMatchObject({ code: 0, stdout: "database is up to date\n" });
    });

    it("nor could it LISTEN, were the parameter let through (ignore_startup_parameters): PgBouncer drops every notification", async () => {
      const lenient = await startPgbouncer({
        upstream: direct,
        poolMode: "transaction",
        poolSize: 1,
        ignoreStartupParameters: ["statement_timeout"],
      });
      bouncers.push(lenient);
      const db = createPostgresDatabase({
        connectionString: lenient.url,
        poolSize: 2,
        connectTimeoutMs: 5_000,
        queryTimeoutMs: 10_000,
        logger: silent,
      });
      const channel = `probe_${randomBytes(4).toString("hex")}`;
      const throughPooler: string[] = [];
      const stopPooled = await db.listen(channel, {
        message: (payload) => throughPooler.push(payload),
      });
      // A control on its own connection to Postgres.
      const control = new pg.Client({ connectionString: direct });
      await control.connect();
      try {
        const heard = first<string>((d) => control.on("notification", (m) => d(m.payload ?? "")));
        await control.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
        const since = lenient.log().length;
        await runSql(direct, "SELECT pg_notify($1, 'lost')", [channel]);
        expect(await heard).toBe("lost");
        // The LISTEN ran on a server connection PgBouncer took back once the
        // statement ended; what arrives there is logged and dropped.
        await lenient.waitForLog(/got packet 'A' from server when not linked/, since, WAIT_MS);
        expect(throughPooler).toEqual([]);
      } finally {
        await control.end();
        await stopPooled();
        await db.close();
      }
    });
  });
});
