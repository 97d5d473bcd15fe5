import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import type { PasswordHasher } from "../src/auth/password-hasher.js";
import { ErrorSchema, RetryInfoSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import {
  AuthService,
  BeginAuthRequestSchema,
  StreamStepsRequestSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";
import { createGate } from "../src/limits/admission.js";
import { delayAfter } from "../src/limits/login-throttle.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import {
  countingHasher,
  createTestApp,
  fastHasher,
  type TestApp,
  testConfig,
} from "./helpers/app.js";
import { backends, pglite, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError, rpcError } from "./helpers/errors.js";
import { bytes, newUser, openForm, register, submitForm, text } from "./helpers/flow.js";
import {
  type ProtocolName,
  protocols,
  stepStreamPaths,
  transportFactory,
} from "./helpers/server.js";

const schedule = {
  LOGIN_FAILURES_BEFORE_DELAY: "5",
  LOGIN_FIRST_DELAY: "1s",
  LOGIN_MAX_DELAY: "15m",
  LOGIN_FAILURE_RESET: "12h",
};

describe("the login delay schedule", () => {
  const s = {
    failuresBeforeDelay: 5,
    firstDelayMs: 1000,
    maxDelayMs: 900_000,
    resetMs: 43_200_000,
  };
  it.each([
    [0, 0],
    [4, 0],
    [5, 1000],
    [6, 2000],
    [7, 4000],
    [14, 512_000],
    [15, 900_000],
    [500, 900_000],
  ])("after %d failures the next attempt waits %d ms", (failures, wait) =>
    expect(delayAfter(failures, s)).toBe(wait),
  );
});

describe("the argon2id gate", () => {
  it("refuses at once beyond in-flight plus queued, and admits again as work ends", async () => {
    const gate = createGate({ inFlight: 1, queued: 1 });
    let finish: () => void = () => {};
    const slow = () => new Promise<string>((r) => (finish = () => r("done")));
    const first = gate.run(slow);
    const second = gate.run(async () => "second");
    await expectRpcError(
      gate.run(async () => "third"),
      Code.ResourceExhausted,
      "hrpc.resource-exhausted",
    );
    expect([gate.inFlight, gate.queued]).toEqual([1, 1]);
    finish();
    expect(await Promise.all([first, second])).toEqual(["done", "second"]);
    expect(await gate.run(async () => "again")).toBe("again");
    expect([gate.inFlight, gate.queued]).toEqual([0, 0]);
  });
});

describe.each(backends)("limits on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;
  const counted = countingHasher();

  beforeAll(async () => {
    database = await backend.open();
    app = await createTestApp(database.db, { env: schedule, hasher: counted.hasher });
  });
  afterEach(() => app.clock.reset());
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  /** One login attempt: "ok", "bad", or the seconds to wait. */
  async function attempt(email: string, password: string): Promise<"ok" | "bad" | number> {
    const authId = await openForm(app.client, "login");
    try {
      await submitForm(app.client, authId, [text(email), bytes(password)]);
      return "ok";
    } catch (err) {
      const e = await rpcError(Promise.reject(err));
      if (e.identifier === "h.bad-password\nh.bad-email") return "bad";
      expect({ code: e.codeName, identifier: e.identifier }).toEqual({
        code: "ResourceExhausted",
        identifier: "hrpc.resource-exhausted",
      });
      const match = /wait (\d+) s/.exec(e.message);
      return Number(match?.[1]);
    }
  }

  it("delays a guessed account on the schedule, checks no password while delayed, and resets on success", async () => {
    const user = newUser();
    await register(app.client, user);
    const answers: (string | number)[] = [];
    for (let i = 0; i < 5; i++) answers.push(await attempt(user.email, "wrong password!"));
    expect(answers).toEqual(["bad", "bad", "bad", "bad", "bad"]);
    const verifies = counted.calls.verify.length;
    expect(await attempt(user.email, user.password)).toBe(1);
    expect(counted.calls.verify.length).toBe(verifies);
    app.clock.advance(1000);
    expect(await attempt(user.email, "wrong password!")).toBe("bad");
    expect(await attempt(user.email, user.password)).toBe(2);
    app.clock.advance(2000);
    expect(await attempt(user.email, user.password)).toBe("ok");
    // The success forgot every failure.
    for (let i = 0; i < 5; i++) expect(await attempt(user.email, "wrong password!")).toBe("bad");
  });

  it("throttles an unknown email exactly as a known one", async () => {
    const known = newUser();
    await register(app.client, known);
    const unknown = newUser();
    const run = async (email: string) => {
      const seen: (string | number)[] = [];
      for (let i = 0; i < 7; i++) seen.push(await attempt(email, "wrong password!"));
      app.clock.advance(1000);
      seen.push(await attempt(email, "wrong password!"));
      return seen;
    };
    const a = await run(known.email);
    const b = await run(unknown.email);
    expect(a).toEqual(["bad", "bad", "bad", "bad", "bad", 1, 1, "bad"]);
    expect(b).toEqual(a);
  });

  it("caps the wait at LOGIN_MAX_DELAY and forgets failures after LOGIN_FAILURE_RESET", async () => {
    const user = newUser();
    for (let i = 0; i < 5; i++) await attempt(user.email, "x wrong password");
    for (let i = 0; i < 12; i++) {
      app.clock.advance(15 * 60_000);
      expect(await attempt(user.email, "x wrong password")).toBe("bad");
    }
    expect(await attempt(user.email, "x wrong password")).toBe(900);
    app.clock.advance(12 * 3_600_000);
    expect(await attempt(user.email, "x wrong password")).toBe("bad");
  });

  it("refuses BeginAuth from an address beyond LIMIT_LIVE_FLOWS, and not from another", async () => {
    const capped = await createTestApp(database.db, { env: { LIMIT_LIVE_FLOWS: "3" } });
    try {
      const from = (address: string) => ({ address, userAgent: undefined });
      for (let i = 0; i < 3; i++) await capped.ctx.flows.begin(from("203.0.113.7"));
      await expectRpcError(
        capped.ctx.flows.begin(from("203.0.113.7")),
        Code.ResourceExhausted,
        "hrpc.resource-exhausted",
      );
      await capped.ctx.flows.begin(from("203.0.113.8"));
    } finally {
      await capped.close();
    }
  });
});

describe("limits on a real server", () => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  const transports = transportFactory();
  const fromSix = transportFactory({ localAddress: "127.0.0.6" });
  const lines: Record<string, unknown>[] = [];

  beforeAll(async () => {
    database = await pglite.open();
    ctx = await createAppContext(
      testConfig({
        ...schedule,
        LOG_LEVEL: "trace",
        LIMIT_BEGIN_AUTH: "5/1m",
        TRUSTED_PROXIES: "127.0.0.2/32",
      }),
      {
        db: database.db,
        hasher: fastHasher,
        logger: pino({ level: "trace" }, { write: (l: string) => lines.push(JSON.parse(l)) }),
        background: false,
      },
    );
    server = await startServer(ctx);
  });
  afterAll(async () => {
    transports.closeAll();
    fromSix.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  /** A BeginAuth over hRPC from `localAddress`, sending `forwarded` as X-Forwarded-For. */
  const hrpcBegin = (localAddress: string, forwarded?: string) =>
    new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>(
      (resolve, reject) => {
        const url = new URL(`${server.url}/protocol.auth.v1.AuthService/BeginAuth`);
        import("node:http").then(({ request }) => {
          const req = request(
            url,
            {
              method: "POST",
              localAddress,
              headers: {
                "content-type": "application/hrpc",
                ...(forwarded ? { "x-forwarded-for": forwarded } : {}),
              },
            },
            (res) => {
              const chunks: Buffer[] = [];
              res.on("data", (c: Buffer) => chunks.push(c));
              res.on("end", () =>
                resolve({
                  status: res.statusCode ?? 0,
                  headers: res.headers,
                  body: Buffer.concat(chunks),
                }),
              );
            },
          );
          req.on("error", reject);
          req.end(toBinary(BeginAuthRequestSchema, create(BeginAuthRequestSchema, {})));
        }, reject);
      },
    );

  it("holds a BeginAuth flood from one address while another is served, with hRPC's 429 and Retry-After", async () => {
    for (let i = 0; i < 5; i++) expect((await hrpcBegin("127.0.0.3")).status).toBe(200);
    const refused = await hrpcBegin("127.0.0.3");
    expect(refused.status).toBe(429);
    // The rest of LIMIT_BEGIN_AUTH's minute, in whole seconds, in both places.
    const retryAfter = Number(refused.headers["retry-after"]);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    const error = fromBinary(ErrorSchema, refused.body);
    expect(error.identifier).toBe("hrpc.resource-exhausted");
    expect(fromBinary(RetryInfoSchema, error.details).retryAfter).toBe(retryAfter);
    expect((await hrpcBegin("127.0.0.4")).status).toBe(200);
  });

  it("ignores X-Forwarded-For from an untrusted peer, and believes it from a trusted proxy", async () => {
    // 127.0.0.5 is not a trusted proxy: its forged header changes nothing.
    for (let i = 0; i < 5; i++)
      expect((await hrpcBegin("127.0.0.5", `198.51.100.${i}`)).status).toBe(200);
    expect((await hrpcBegin("127.0.0.5", "198.51.100.99")).status).toBe(429);
    // Behind the trusted proxy each forwarded client has its own budget.
    for (let i = 0; i < 5; i++)
      expect((await hrpcBegin("127.0.0.2", "192.0.2.10")).status).toBe(200);
    expect((await hrpcBegin("127.0.0.2", "192.0.2.10")).status).toBe(429);
    expect((await hrpcBegin("127.0.0.2", "192.0.2.11")).status).toBe(200);
    // The rightmost untrusted hop is the client: a hop the client wrote itself is not.
    expect((await hrpcBegin("127.0.0.2", "192.0.2.10, 192.0.2.12")).status).toBe(200);
  });

  it.each(protocols)("sees the same client address over %s", async (protocol) => {
    const client = createClient(AuthService, fromSix.create(protocol, server.url));
    const user = newUser();
    await register(client, user);
    const audited = lines.filter(
      (l) => l.audit === "registration.succeeded" && String(l.userId ?? "") !== "",
    );
    expect(audited.at(-1)?.address).toBe("127.0.0.6");
  });

  it("never logs a token, auth_id, password or key, even at trace", async () => {
    const client = createClient(AuthService, transports.create("connect-json/http1", server.url));
    const user = newUser();
    const authId = await openForm(client, "register");
    const done = await submitForm(client, authId, [
      text(user.email),
      text(user.username),
      bytes(user.password),
    ]);
    const token = done.step?.step.case === "session" ? done.step.step.value.sessionToken : "";
    await client.checkLoggedIn({}, { headers: { authorization: token } });
    const loginId = await openForm(client, "login");
    await submitForm(client, loginId, [text(user.email), bytes(user.password)]);
    await client
      .federate({ serverId: "other.example.org:2289" }, { headers: { authorization: token } })
      .catch(() => {});
    const all = JSON.stringify(lines);
    expect(lines.some((l) => l.audit === "login.succeeded")).toBe(true);
    for (const secret of [
      token,
      authId,
      loginId,
      user.password,
      Buffer.from(ctx.serverKeys.current().secretKey).toString("hex"),
      Buffer.from(ctx.serverKeys.current().secretKey).toString("base64"),
    ]) {
      expect(secret.length).toBeGreaterThanOrEqual(8);
      expect(all).not.toContain(secret);
    }
  });
});

describe("the argon2id gate in a server", () => {
  it("answers ResourceExhausted at once instead of queueing forever", async () => {
    const database = await pglite.open();
    const gates: (() => void)[] = [];
    let entered: (() => void) | undefined;
    /** Resolves once a verification is waiting at its gate. */
    const verifying = () =>
      new Promise<void>((resolve) => {
        if (gates.length > 0) resolve();
        else entered = resolve;
      });
    // A hasher whose verifications wait until the test lets them go.
    const stuck: PasswordHasher = {
      hash: (p) => fastHasher.hash(p),
      verify: (phc, p) =>
        new Promise((r) => {
          gates.push(() => r(fastHasher.verify(phc, p)));
          entered?.();
          entered = undefined;
        }),
      needsRehash: () => false,
    };
    const lines: string[] = [];
    const ctx = await createAppContext(
      testConfig({ ARGON2_MAX_IN_FLIGHT: "1", ARGON2_MAX_QUEUED: "1" }),
      {
        db: database.db,
        hasher: stuck,
        logger: pino({ level: "info" }, { write: (line: string) => lines.push(line) }),
        background: false,
      },
    );
    // Told each time a verification reaches the gate, admitted or queued.
    const gate = ctx.limits.argon2;
    const run = gate.run;
    const arrivals: { n: number; resolve: () => void }[] = [];
    let arrived = 0;
    (gate as { run: typeof run }).run = (work) => {
      const ran = run(work); // admits or queues it before returning
      arrived++;
      for (const a of arrivals.filter((a) => arrived >= a.n)) a.resolve();
      return ran;
    };
    const reached = (n: number) =>
      new Promise<void>((resolve) => {
        if (arrived >= n) resolve();
        else arrivals.push({ n, resolve });
      });
    try {
      const login = async () => {
        const id = await ctx.flows.begin();
        await ctx.flows.advance(id, { kind: "choice", choice: "login" });
        return ctx.flows.advance(id, {
          kind: "form",
          values: [
            { kind: "string", value: "nobody@example.org" },
            { kind: "string", value: "some password" },
          ],
        });
      };
      // Both end in bad credentials, once verified: caught here, checked below.
      const held = [login(), login()].map((p) =>
        p.then(
          () => "ok",
          (e: unknown) => e,
        ),
      );
      await reached(2);
      // One verifying, the other waiting its turn, unhashed.
      expect([gate.inFlight, gate.queued, gates.length]).toEqual([1, 1, 1]);
      const error = await rpcError(login());
      expect(error).toMatchObject({
        codeName: "ResourceExhausted",
        identifier: "hrpc.resource-exhausted",
      });
      // Audited and counted, as every refusal is.
      const audited = lines.map((l) => JSON.parse(l)).filter((l) => l.audit === "limit.exceeded");
      expect(audited).toMatchObject([{ limit: "argon2" }]);
      expect(await ctx.metrics.text()).toMatch(/cadenza_limit_exceeded_total\{limit="argon2"\} 1/);
      // Let the verifications go one at a time: the queued login runs when the first ends.
      gates.shift()?.();
      await verifying();
      expect([gate.inFlight, gate.queued, gates.length]).toEqual([1, 0, 1]);
      gates.shift()?.();
      for (const result of await Promise.all(held)) {
        expect(result).toMatchObject({ identifier: "h.bad-password\nh.bad-email" });
      }
    } finally {
      await ctx.close();
      await database.close();
    }
  });
});

describe("open streams per address, in a server", () => {
  it("refuses one stream too many from an address, on Connect and hRPC alike, audited", async () => {
    const database = await pglite.open();
    const lines: string[] = [];
    const ctx = await createAppContext(testConfig({ LIMIT_STREAMS_PER_ADDRESS: "2" }), {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "info" }, { write: (line: string) => lines.push(line) }),
      background: false,
    });
    const server = await startServer(ctx);
    const transports = transportFactory();
    const abort = new AbortController();
    const later = new AbortController();
    try {
      const client = createClient(AuthService, transports.create("connect-json/http1", server.url));
      /** Opens StreamSteps on a fresh flow; resolves once the server sent the first step. */
      const openStream = async (signal: AbortSignal) => {
        const { authId } = await client.beginAuth({});
        const stream = client.streamSteps({ authId }, { signal })[Symbol.asyncIterator]();
        const first = stream.next();
        // A refusal may come before nextStep answers: it is awaited below.
        first.catch(() => {});
        await client.nextStep({ authId });
        await first;
        return stream;
      };
      const held = [await openStream(abort.signal), await openStream(abort.signal)];
      expect(held).toHaveLength(2);
      const third = await rpcError(openStream(new AbortController().signal));
      expect(third).toMatchObject({
        codeName: "ResourceExhausted",
        identifier: "hrpc.resource-exhausted",
      });
      expect(third.message).toContain("too many open streams from your address (2)");
      // hRPC's WebSockets share the same slots: its handshake is refused with 429.
      const ws = new WebSocket(
        `${server.url.replace(/^http/, "ws")}/protocol.auth.v1.AuthService/StreamSteps`,
        ["hrpc1"],
      );
      ws.on("error", () => {});
      const status = await new Promise<number | undefined>((resolve, reject) => {
        ws.once("unexpected-response", (_req, res) => resolve(res.statusCode));
        ws.once("open", () => reject(new Error("the handshake succeeded")));
      });
      ws.terminate();
      expect(status).toBe(429);
      const audited = lines.map((l) => JSON.parse(l)).filter((l) => l.audit === "limit.exceeded");
      expect(audited.map((l) => l.limit)).toEqual(["streamsPerAddress", "streamsPerAddress"]);
      // Closing them frees their slots (released as the server sees each call end).
      abort.abort();
      await expect
        .poll(() =>
          openStream(later.signal).then(
            () => "opened",
            (err: unknown) => Code[ConnectError.from(err).code],
          ),
        )
        .toBe("opened");
    } finally {
      abort.abort();
      later.abort();
      transports.closeAll();
      await server.close();
      await ctx.close();
      await database.close();
    }
  });
});

/**
 * LIMIT_STREAMS_PER_ADDRESS and MAX_OPEN_STREAMS, as clients meet them on
 * every transport, on both of StreamSteps' paths (test/helpers/server.ts):
 * one budget per address shared by Connect, gRPC and hRPC, slots given back
 * when a stream ends, and the open-streams gauge and the call histogram
 * telling the same story.
 */
const streamCases = backends.flatMap((backend) =>
  stepStreamPaths.map((streamSteps) => ({ name: backend.name, backend, streamSteps })),
);

describe.each(streamCases)(
  "open streams on $name, StreamSteps on the $streamSteps path",
  ({ backend, streamSteps }) => {
    let database: TestDatabase;
    let ctx: AppContext;
    let server: RunningServer;
    const fromA = transportFactory({ localAddress: "127.0.0.21" });
    const fromB = transportFactory({ localAddress: "127.0.0.22" });
    const path = "/protocol.auth.v1.AuthService/StreamSteps";

    beforeAll(async () => {
      database = await backend.open();
      ctx = await createAppContext(
        testConfig({ LIMIT_STREAMS_PER_ADDRESS: "2", MAX_OPEN_STREAMS: "3" }),
        {
          db: database.db,
          hasher: fastHasher,
          logger: pino({ level: "silent" }),
          background: false,
        },
      );
      server = await startServer(ctx, { streamSteps });
    });
    afterAll(async () => {
      fromA.closeAll();
      fromB.closeAll();
      await server?.close();
      await ctx?.close();
      await database?.close();
    });

    /** A flow that has shown its first step, so a stream on it is open once that step arrives. */
    async function shownFlow(): Promise<string> {
      const authId = await ctx.flows.begin();
      await ctx.flows.advance(authId, { kind: "current" });
      return authId;
    }

    /** Opens StreamSteps; resolves once it is open, or rejects with why it was refused. */
    async function open(transports: ReturnType<typeof transportFactory>, protocol: ProtocolName) {
      const abort = new AbortController();
      const client = createClient(AuthService, transports.create(protocol, server.url));
      const it = client
        .streamSteps({ authId: await shownFlow() }, { signal: abort.signal })
        [Symbol.asyncIterator]();
      await it.next();
      return { close: () => abort.abort() };
    }

    /** Opens an hRPC stream from `localAddress`: open once its first frame arrives, or refused at the handshake. */
    async function openWs(localAddress: string) {
      const authId = await shownFlow();
      const ws = new WebSocket(`${server.url.replace(/^http/, "ws")}${path}`, "hrpc1", {
        localAddress,
      });
      ws.on("error", () => {});
      return new Promise<{ close(): void } | { status: number; identifier: string }>((resolve) => {
        ws.once("unexpected-response", (_req, res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              identifier: fromBinary(ErrorSchema, Buffer.concat(chunks)).identifier,
            }),
          );
        });
        ws.once("open", () => {
          ws.once("message", () => resolve({ close: () => ws.terminate() }));
          ws.send(toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId })));
        });
      });
    }

    const gauge = async () => {
      const text = await ctx.metrics.text();
      let sum = 0;
      for (const m of text.matchAll(/^cadenza_open_streams\{[^}]*\} (\d+)$/gm)) sum += Number(m[1]);
      return sum;
    };
    const refusedCalls = async () => {
      const text = await ctx.metrics.text();
      let sum = 0;
      for (const m of text.matchAll(
        /^rpc_server_call_duration_seconds_count\{[^}]*rpc_method="StreamSteps",rpc_response_status_code="resource_exhausted"\} (\d+)$/gm,
      )) {
        sum += Number(m[1]);
      }
      return sum;
    };

    it("shares one budget per address across transports, one in all, and gives slots back", async () => {
      const refusedBefore = await refusedCalls();
      const first = await open(fromA, "connect-json/http1");
      const second = await openWs("127.0.0.21");
      expect("close" in second).toBe(true);
      expect(ctx.limits.streams.open).toBe(2);
      expect(await gauge()).toBe(2);

      // A's two slots are taken, whatever the transport.
      const overA = await rpcError(open(fromA, "grpc/http2"));
      expect(overA).toMatchObject({
        codeName: "ResourceExhausted",
        identifier: "hrpc.resource-exhausted",
      });
      expect(overA.message).toMatch(/too many open streams from your address \(2\)/);
      expect(await openWs("127.0.0.21")).toEqual({
        status: 429,
        identifier: "hrpc.resource-exhausted",
      });

      // B has its own budget, but the server holds MAX_OPEN_STREAMS (3) once B opens one.
      const third = await open(fromB, "grpc-web/http1");
      const busy = await rpcError(open(fromB, "connect-binary/http2"));
      expect(busy).toMatchObject({
        codeName: "ResourceExhausted",
        identifier: "hrpc.resource-exhausted",
      });
      expect(busy.message).toMatch(/server is busy/);
      expect(await refusedCalls()).toBe(refusedBefore + 2);

      // A stream that ends gives its slot back.
      first.close();
      await expect.poll(() => ctx.limits.streams.open).toBe(2);
      const again = await open(fromA, "grpc/http2");
      expect(await gauge()).toBe(3);

      for (const s of [second, third, again]) if ("close" in s) s.close();
      await expect.poll(() => ctx.limits.streams.open).toBe(0);
      await expect.poll(gauge).toBe(0);
    });
  },
);
