import { once } from "node:events";
import { performance } from "node:perf_hooks";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { isDatabaseUnavailable } from "../src/db/connection-failure.js";
import { createPostgresDatabase } from "../src/db/postgres.js";
import { ErrorSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import {
  AuthService,
  StreamStepsRequestSchema,
  StreamStepsResponseSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { postgresBackend, type TestDatabase } from "./helpers/databases.js";
import { rpcError } from "./helpers/errors.js";
import { type Fault, type FaultProxy, startFaultProxy } from "./helpers/fault-proxy.js";
import {
  bytes,
  login,
  newUser,
  openForm,
  submitForm,
  type TestUser,
  text,
} from "./helpers/flow.js";
import { type ServerProcess, startServerProcess } from "./helpers/process.js";
import { type ProtocolName, transportFactory } from "./helpers/server.js";

/**
 * The database failing under a running cadenza, on Postgres only: a TCP proxy
 * between the two cuts, stalls (a frozen database) and resets connections.
 */
const backend = postgresBackend;

type LogLine = { level: number; msg: string } & Record<string, unknown>;
const ERROR = 50;

/** A pino logger whose lines land in `lines`, parsed. */
function capturingLogger(lines: LogLine[]) {
  return pino(
    { level: "debug" },
    { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
  );
}

async function timed<T>(run: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const start = performance.now();
  const value = await run();
  return { value, ms: performance.now() - start };
}

const registrationFields = (user: TestUser) => [
  text(user.email),
  text(user.username),
  bytes(user.password),
];

describe.skipIf(backend === undefined)("Postgres failing behind a proxy, in process", () => {
  // Short enough to keep the test quick; READY_TIMEOUT below the others, so a
  // 503 within it can only come from /readyz's own timer.
  const connectMs = 1_000;
  const queryMs = 1_000;
  const readyMs = 250;
  /** What a loaded two-core machine may add to a call on loopback. */
  const slackMs = 500;
  const password = "pw-that-must-not-be-logged";

  let database: TestDatabase;
  let proxy: FaultProxy;
  let ctx: AppContext;
  let server: RunningServer;
  const logs: LogLine[] = [];
  const transports = transportFactory();

  beforeAll(async () => {
    database = await (backend as NonNullable<typeof backend>).open();
    const direct = new URL(database.url ?? "");
    proxy = await startFaultProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
    const viaProxy = new URL(proxy.via(database.url ?? ""));
    // Trust authentication ignores it; it is here to prove it never reaches a log.
    viaProxy.password = password;
    ctx = await createAppContext(
      testConfig({
        DATABASE_URL: viaProxy.toString(),
        DATABASE_CONNECT_TIMEOUT: `${connectMs}ms`,
        DATABASE_QUERY_TIMEOUT: `${queryMs}ms`,
        READY_TIMEOUT: `${readyMs}ms`,
      }),
      { hasher: fastHasher, logger: capturingLogger(logs), background: false },
    );
    server = await startServer(ctx);
  });
  afterAll(async () => {
    transports.closeAll();
    await proxy?.restore().catch(() => {});
    await server?.close();
    await ctx?.close();
    await proxy?.close();
    await database?.close();
  });

  const readyz = () => fetch(`${server.url}/readyz`);

  it(
    "fails a transaction that stalls after one query timeout, without a ROLLBACK, and one stalled in COMMIT as of unknown outcome",
    async () => {
      const db = createPostgresDatabase({
        connectionString: proxy.via(database.url ?? ""),
        poolSize: 2,
        connectTimeoutMs: connectMs,
        queryTimeoutMs: queryMs,
        logger: pino({ level: "silent" }),
      });
      const failure = (err: unknown) => ({
        unavailable: isDatabaseUnavailable(err),
        cause: ((err as Error).cause as Error | undefined)?.message,
      });
      try {
        await db.exec("CREATE TABLE probe (id int PRIMARY KEY)");
        // A ROLLBACK on the stalled connection would wait another query timeout.
        const midway = await timed(() =>
          db
            .transaction(async (tx) => {
              await tx.query("INSERT INTO probe VALUES (1)");
              await proxy.fault("stall");
              await tx.query("INSERT INTO probe VALUES (2)");
            })
            .catch(failure),
        );
        expect(midway.value).toMatchObject({ unavailable: true });
        expect(midway.ms).toBeLessThan(queryMs + slackMs);
        await proxy.restore();

        const commit = await timed(() =>
          db
            .transaction(async (tx) => {
              await tx.query("INSERT INTO probe VALUES (3)");
              await proxy.fault("stall");
            })
            .catch(failure),
        );
        expect(commit.value).toEqual({
          unavailable: true,
          cause: expect.stringMatching(/during COMMIT: the outcome is unknown/),
        });
        expect(commit.ms).toBeLessThan(queryMs + slackMs);
        await proxy.restore();

        // Resumed, the frozen server reads what was sent before the client gave
        // up: the cut-off transaction rolls back, and the COMMIT commits. That
        // is why it is "unknown", never "rolled back".
        const committed = async () =>
          (await database.db.query<{ id: number }>("SELECT id FROM probe ORDER BY id")).rows;
        for (let i = 0; i < 100 && (await committed()).length === 0; i++) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        expect(await committed()).toEqual([{ id: 3 }]);
        expect((await db.query("SELECT 1 AS ok")).rows).toEqual([{ ok: 1 }]);
      } finally {
        await proxy.restore();
        await db.close();
      }
    },
    2 * (queryMs + slackMs) + 5_000,
  );

  describe.each<Fault>(["cut", "stall", "reset"])("during a %s", (fault) => {
    it(
      "answers Unavailable within the timeouts, /readyz follows, and it recovers without a restart, logged once",
      async () => {
        const client = createClient(
          AuthService,
          transports.create("connect-json/http1", server.url),
        );
        const user = newUser();
        const authId = await openForm(client, "register");
        expect((await readyz()).status).toBe(200);
        const from = logs.length;

        await proxy.fault(fault);
        const unavailable = { codeName: "Unavailable", identifier: "hrpc.unavailable" };
        const begin = await timed(() => rpcError(client.beginAuth({})));
        expect(begin.value).toMatchObject(unavailable);
        expect(begin.ms).toBeLessThan(connectMs + queryMs + slackMs);
        const registration = await timed(() =>
          rpcError(submitForm(client, authId, registrationFields(user))),
        );
        expect(registration.value).toMatchObject(unavailable);
        expect(registration.value.message).not.toMatch(/postgres|connect|timeout/i);
        expect(registration.ms).toBeLessThan(connectMs + queryMs + slackMs);
        const ready = await timed(async () => {
          const res = await readyz();
          return { status: res.status, body: (await res.json()) as unknown };
        });
        expect(ready.value).toEqual({ status: 503, body: { status: "database unreachable" } });
        expect(ready.ms).toBeLessThan(readyMs + slackMs);

        await proxy.restore();
        expect((await client.beginAuth({})).authId).toHaveLength(32);
        const done = await submitForm(client, authId, registrationFields(user));
        expect(done.step?.step.case).toBe("session");
        expect((await readyz()).status).toBe(200);

        const outage = logs.slice(from);
        const errors = outage.filter((l) => l.level >= ERROR);
        expect(errors.map((l) => l.msg)).toEqual(["database unreachable"]);
        expect(errors[0]?.cause).toMatchObject({
          type: "Error",
          message: expect.stringMatching(/\S/),
        });
        const recovered = outage.filter((l) => l.msg === "database reachable again");
        expect(recovered).toHaveLength(1);
        expect(recovered[0]?.outageMs).toBeGreaterThan(0);
        expect(outage.findIndex((l) => l.msg === "database unreachable")).toBeLessThan(
          outage.indexOf(recovered[0] as LogLine),
        );
        expect(JSON.stringify(logs)).not.toContain(password);
      },
      // Three failing calls within their budgets, then a few that succeed.
      3 * (connectMs + queryMs + slackMs) + 5_000,
    );
  });
});

/** How long starting `src/main.ts` as a process may take on these machines. */
const PROCESS_START_MS = 15_000;

describe.skipIf(backend === undefined)("cadenza processes on Postgres", () => {
  const databases: TestDatabase[] = [];
  const running: ServerProcess[] = [];
  const transports = transportFactory();
  const start = async (env: Record<string, string>) => {
    const p = await startServerProcess(env);
    running.push(p);
    return p;
  };
  afterAll(async () => {
    transports.closeAll();
    await Promise.all(running.map((p) => p.stop()));
    for (const d of databases) await d.close();
  });

  const IN_FLIGHT = 40;
  it(
    "killed with SIGKILL during concurrent registrations: every answered one logs in after a restart, none is half-written",
    async () => {
      const database = await (backend as NonNullable<typeof backend>).open();
      databases.push(database);
      const env = { DATABASE_URL: database.url ?? "" };
      const first = await start(env);
      const onFirst = createClient(AuthService, transports.create("connect-json/http1", first.url));
      const users = Array.from({ length: IN_FLIGHT }, () => newUser());
      const forms = await Promise.all(users.map(() => openForm(onFirst, "register")));

      // Every submission in flight at once; the process dies once a quarter
      // are answered, so the rest die hashing, writing or committing.
      const answered = new Map<TestUser, { userId: bigint; sessionToken: string }>();
      let enoughAnswered: () => void = () => {};
      const quarter = new Promise<void>((resolve) => {
        enoughAnswered = resolve;
      });
      const submissions = users.map((user, i) =>
        submitForm(onFirst, forms[i] as string, registrationFields(user)).then((res) => {
          if (res.step?.step.case === "session") answered.set(user, res.step.step.value);
          if (answered.size >= IN_FLIGHT / 4) enoughAnswered();
        }),
      );
      await Promise.race([quarter, Promise.allSettled(submissions)]);
      const exited = once(first.child, "exit");
      first.child.kill("SIGKILL");
      expect(await exited).toEqual([null, "SIGKILL"]);
      await Promise.allSettled(submissions);
      expect(answered.size).toBeGreaterThan(0);
      expect(answered.size).toBeLessThan(IN_FLIGHT);

      const second = await start(env);
      // One transaction per registration: no account without its session and
      // its flow's final step, and no session or finished flow without an account.
      const counts = await database.db.query<Record<string, bigint>>(
        `SELECT (SELECT count(*) FROM users) AS users,
                (SELECT count(*) FROM users u
                  WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id)) AS without_session,
                (SELECT count(*) FROM sessions) AS sessions,
                (SELECT count(*) FROM auth_flows WHERE done) AS done_flows,
                (SELECT count(*) FROM auth_flows f
                  WHERE done AND NOT EXISTS (SELECT 1 FROM auth_flow_steps s
                                              WHERE s.flow_key = f.key AND s.seq = f.step_count))
                  AS done_without_step`,
      );
      const row = counts.rows[0] ?? {};
      expect(row).toEqual({
        users: row.users,
        without_session: 0n,
        sessions: row.users,
        done_flows: row.users,
        done_without_step: 0n,
      });
      expect(Number(row.users)).toBeGreaterThanOrEqual(answered.size);

      const onSecond = createClient(
        AuthService,
        transports.create("connect-json/http1", second.url),
      );
      for (const [user, session] of answered) {
        await onSecond.checkLoggedIn({}, { headers: { authorization: session.sessionToken } });
        expect((await login(onSecond, user.email, user.password)).userId).toBe(session.userId);
      }
      expect(await second.stop()).toBe(0);
    },
    // Two start-ups, then 40 argon2id hashes and a few verifications at the default cost.
    2 * PROCESS_START_MS + 15_000,
  );

  const SHUTDOWN_GRACE_MS = 5_000;
  it(
    "drains on SIGTERM: open streams on every transport end with Unavailable, and it exits 0 within SHUTDOWN_GRACE",
    async () => {
      const database = await (backend as NonNullable<typeof backend>).open();
      databases.push(database);
      const p = await start({
        DATABASE_URL: database.url ?? "",
        SHUTDOWN_GRACE: `${SHUTDOWN_GRACE_MS}ms`,
      });
      const connectProtocols: ProtocolName[] = [
        "connect-json/http1",
        "grpc/http2",
        "grpc-web/http1",
      ];
      const clients = connectProtocols.map((protocol) =>
        createClient(AuthService, transports.create(protocol, p.url)),
      );

      // Each stream is open once it has shown the flow's first step.
      const streams = await Promise.all(
        clients.map(async (client) => {
          const { authId } = await client.beginAuth({});
          const iterator = client.streamSteps({ authId })[Symbol.asyncIterator]();
          const firstStep = iterator.next();
          await client.nextStep({ authId });
          expect((await firstStep).done).toBe(false);
          return iterator;
        }),
      );
      const hrpc = await openHrpcStream(p.url, await clients[0]?.beginAuth({}));
      await clients[0]?.nextStep({ authId: hrpc.authId });
      await hrpc.firstFrame;

      const sent = performance.now();
      const exited = once(p.child, "exit");
      p.child.kill("SIGTERM");
      const ends = await Promise.all(
        streams.map(async (iterator) => {
          try {
            const next = await iterator.next();
            return { done: next.done };
          } catch (err) {
            const e = ConnectError.from(err);
            return {
              code: Code[e.code],
              identifier: e.findDetails(ErrorSchema)[0]?.identifier,
            };
          }
        }),
      );
      expect(ends).toEqual(
        connectProtocols.map(() => ({ code: "Unavailable", identifier: "hrpc.unavailable" })),
      );
      await hrpc.closed;
      const last = hrpc.frames.at(-1) ?? Buffer.alloc(0);
      expect(last[0]).toBe(0x01);
      expect(fromBinary(ErrorSchema, last.subarray(1)).identifier).toBe("hrpc.unavailable");

      const [code] = (await exited) as [number | null];
      expect(code).toBe(0);
      expect(performance.now() - sent).toBeLessThan(SHUTDOWN_GRACE_MS);
      expect(p.logs.some((l) => l.msg === "stopped")).toBe(true);
    },
    PROCESS_START_MS + SHUTDOWN_GRACE_MS + 5_000,
  );
});

/** An hRPC StreamSteps WebSocket on `authId`'s flow; `firstFrame` resolves on its first step. */
async function openHrpcStream(baseUrl: string, begun: { authId: string } | undefined) {
  const authId = begun?.authId ?? "";
  const ws = new WebSocket(
    `${baseUrl.replace(/^http/, "ws")}/protocol.auth.v1.AuthService/StreamSteps`,
    ["hrpc1"],
  );
  const frames: Buffer[] = [];
  let gotFrame: () => void = () => {};
  const firstFrame = new Promise<void>((resolve) => {
    gotFrame = resolve;
  });
  ws.on("message", (data) => {
    frames.push(data as Buffer);
    gotFrame();
  });
  const closed = once(ws, "close");
  await once(ws, "open");
  ws.send(toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId })));
  return {
    authId,
    frames,
    closed,
    firstFrame: firstFrame.then(() => {
      const frame = frames[0] ?? Buffer.alloc(0);
      expect(frame[0]).toBe(0x00);
      return fromBinary(StreamStepsResponseSchema, frame.subarray(1));
    }),
  };
}
