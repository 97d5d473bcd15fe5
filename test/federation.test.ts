import { createPublicKey, verify as nodeVerify } from "node:crypto";
import { once } from "node:events";
import { createServer as createHttpServer, type ServerResponse } from "node:http";
import { type AddressInfo, createServer as createNetServer, type Socket } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Client, Code, createClient, createRouterTransport } from "@connectrpc/connect";
import { type Logger, pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { generateKeyPair, sign } from "../src/federation/ed25519.js";
import { federationErrors } from "../src/federation/federation-errors.js";
import type { ResolveHost } from "../src/federation/server-ids.js";
import { TokenDataSchema as CadenzaTokenDataSchema } from "../src/gen/cadenza/federation/v1/token_pb.js";
import {
  HomeserverService,
  type StreamAccountEventsResponse,
} from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import {
  AuthService,
  TokenDataSchema as HarmonyTokenDataSchema,
  KeyResponseSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";
import type { Token } from "../src/gen/protocol/harmonytypes/v1/types_pb.js";
import { internalConnectRoutes } from "../src/server/build-app.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { createFakeClock, type FakeClock } from "./helpers/clock.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError, rpcError } from "./helpers/errors.js";
import { newUser, register } from "./helpers/flow.js";
import { freePort, onFreePort, transportFactory } from "./helpers/server.js";

interface Homeserver {
  readonly id: string;
  readonly ctx: AppContext;
  readonly server: RunningServer;
  readonly clock: FakeClock;
  readonly client: Client<typeof AuthService>;
  readonly database: TestDatabase;
}

const transports = transportFactory();

/** A real cadenza on loopback with its own database, federating in insecure (loopback) mode. */
async function homeserver(
  database: TestDatabase,
  env: Record<string, string> = {},
  overrides: { logger?: Logger; resolveHost?: ResolveHost } = {},
): Promise<Homeserver> {
  // Its SERVER_ID names its port, so the port is chosen before it listens.
  return onFreePort(async (port) => {
    const id = `127.0.0.1:${port}`;
    const clock = createFakeClock(Date.now());
    const ctx = await createAppContext(
      testConfig({
        PORT: String(port),
        SERVER_ID: id,
        FEDERATION_ALLOW_INSECURE: "true",
        SHUTDOWN_GRACE: "1s",
        ...env,
      }),
      {
        db: database.db,
        clock,
        hasher: fastHasher,
        logger: overrides.logger ?? pino({ level: "silent" }),
        background: false,
        ...(overrides.resolveHost ? { resolveHost: overrides.resolveHost } : {}),
      },
    );
    const server = await startServer(ctx).catch(async (err: unknown) => {
      await ctx.close();
      throw err;
    });
    const client = createClient(AuthService, transports.create("connect-binary/http2", server.url));
    return { id, ctx, server, clock, client, database };
  });
}

const auth = (token: string) => ({ headers: { authorization: token } });

/** A pino logger whose lines are kept, parsed, for assertions. */
function capturedLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: "warn" },
    { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  /** The warnings logged about `serverId`. */
  const warnings = (serverId: string) =>
    lines.filter((l) => l.level === 40 && l.serverId === serverId);
  return { logger, lines, warnings };
}

/** Names resolved without DNS: `*.loopback.test` is 127.0.0.1, anything else does not exist. */
const resolveHost: ResolveHost = async (hostname) => {
  if (hostname.endsWith(".loopback.test")) return [{ address: "127.0.0.1", family: 4 }];
  throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" });
};

/** A port on loopback that accepts connections and never answers; counts connections. */
async function silentPort() {
  const sockets = new Set<Socket>();
  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  const counted = { server, connections: 0 };
  server.on("connection", () => counted.connections++);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return Object.assign(counted, {
    port,
    /** Drops the connections open now, as a server that gives up would. */
    hangUp: () => {
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  });
}

/** An HTTP server on loopback that counts requests and answers as the test says. */
async function fakeHttp() {
  const fake = {
    requests: 0,
    answer: (res: ServerResponse): void => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<html>");
    },
  };
  const server = createHttpServer((_req, res) => {
    fake.requests++;
    fake.answer(res);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return Object.assign(fake, {
    port,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  });
}

const unavailable = {
  code: Code.Unavailable,
  codeName: "Unavailable",
  identifier: "hrpc.unavailable",
  message: federationErrors.homeserverUnavailable.message,
};

describe.each(backends)("federation between two homeservers on $name", (backend) => {
  const servers: Homeserver[] = [];
  const databases: TestDatabase[] = [];
  let a: Homeserver;
  let b: Homeserver;
  let alice: { userId: bigint; sessionToken: string };

  const open = async () => {
    const db = await backend.open();
    databases.push(db);
    return db;
  };
  let spare: TestDatabase | undefined;
  /**
   * One database for every homeserver besides A and B: each has its own
   * context, settings and clock, and needs no keys or users apart from the
   * others' (they share a signing key, which none of them shares with A or B).
   */
  const shared = async () => {
    spare ??= await open();
    return spare;
  };
  const start = async (
    database: TestDatabase,
    env: Record<string, string> = {},
    overrides: { logger?: Logger; resolveHost?: ResolveHost } = {},
  ) => {
    const s = await homeserver(database, env, overrides);
    servers.push(s);
    return s;
  };
  const federate = async (to: string, session = alice.sessionToken): Promise<Token> => {
    const { token } = await a.client.federate({ serverId: to }, auth(session));
    if (!token) throw new Error("no token");
    return token;
  };
  const loginOnB = (token: Token | undefined, serverId = a.id) =>
    b.client.loginFederated({ ...(token ? { authToken: token } : {}), serverId });
  const tamper = (bytes: Uint8Array, index: number) => {
    const copy = Uint8Array.from(bytes);
    copy[index] = (copy[index] ?? 0) ^ 0x01;
    return copy;
  };

  beforeAll(async () => {
    a = await start(await open());
    b = await start(await open());
    alice = await register(a.client, newUser());
  });
  afterEach(() => {
    for (const s of servers) s.clock.reset();
  });
  afterAll(async () => {
    transports.closeAll();
    for (const s of servers) {
      await s.server.close();
      await s.ctx.close();
    }
    for (const d of databases) await d.close();
  });

  it("logs a user of A into B, where CheckLoggedIn then accepts the session", async () => {
    const token = await federate(b.id);
    const { session } = await loginOnB(token);
    expect(session?.sessionToken).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await b.client.checkLoggedIn({}, auth(session?.sessionToken ?? ""));
    // B's local user for alice is not alice's ID on A.
    expect(session?.userId).not.toBe(alice.userId);
  });

  it("signs TokenData that Harmony servers decode, and node:crypto verifies", async () => {
    const token = await federate(b.id);
    const harmony = fromBinary(HarmonyTokenDataSchema, token.data);
    expect(harmony.userId).toBe(alice.userId);
    expect(harmony.serverId).toBe(b.id);
    expect(harmony.username).toMatch(/^user/);
    const ours = fromBinary(CadenzaTokenDataSchema, token.data);
    expect(Number(ours.issuedAt)).toBe(Math.floor(a.clock.now() / 1000));
    expect(ours.nonce).toHaveLength(16);

    const { key } = await a.client.key({});
    expect(key).toHaveLength(32);
    const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), key]);
    const publicKey = createPublicKey({ key: spki, format: "der", type: "spki" });
    expect(nodeVerify(null, token.data, publicKey, token.sig)).toBe(true);
    expect(nodeVerify(null, tamper(token.data, 0), publicKey, token.sig)).toBe(false);
  });

  it("maps every fresh token of one user to the same local account, and refuses a replay", async () => {
    const first = await loginOnB(await federate(b.id));
    const token = await federate(b.id);
    const second = await loginOnB(token);
    expect(second.session?.userId).toBe(first.session?.userId);
    expect(second.session?.sessionToken).not.toBe(first.session?.sessionToken);
    await expectRpcError(loginOnB(token), Code.Unauthenticated, "h.token-replayed");
  });

  it("refreshes the username on each login", async () => {
    const first = await loginOnB(await federate(b.id));
    await a.database.db.query("UPDATE users SET username = 'renamed-alice' WHERE id = $1", [
      alice.userId,
    ]);
    await loginOnB(await federate(b.id));
    const { rows } = await b.database.db.query<{ username: string; email: string | null }>(
      "SELECT username, email FROM users WHERE id = $1",
      [first.session?.userId],
    );
    expect(rows[0]).toEqual({ username: "renamed-alice", email: null });
  });

  describe("for the chat server beside B", () => {
    const internal = (h: Homeserver) => {
      const { routes, interceptors } = internalConnectRoutes(h.ctx);
      return createClient(
        HomeserverService,
        createRouterTransport(routes, { router: { interceptors } }),
      );
    };
    /** B's account events after `after`, the first `n`. */
    const eventsOnB = async (after: bigint, n: number) => {
      const abort = new AbortController();
      const got: StreamAccountEventsResponse[] = [];
      for await (const e of internal(b).streamAccountEvents({ after }, { signal: abort.signal })) {
        got.push(e);
        if (got.length === n) break;
      }
      abort.abort();
      return got;
    };

    it("announces a federated user's first login and a later rename as account events", async () => {
      const { cursor } = await internal(b).getUsers({});
      const carol = await register(a.client, newUser());
      const first = await loginOnB(await federate(b.id, carol.sessionToken));
      await loginOnB(await federate(b.id, carol.sessionToken)); // same name: no event
      await a.database.db.query("UPDATE users SET username = 'carol-renamed' WHERE id = $1", [
        carol.userId,
      ]);
      await loginOnB(await federate(b.id, carol.sessionToken));
      const events = await eventsOnB(cursor, 2);
      expect(events.map((e) => [e.userId, e.event.case])).toEqual([
        [first.session?.userId, "federatedUserCreated"],
        [first.session?.userId, "usernameChanged"],
      ]);
      expect(events[0]?.event.value).toMatchObject({
        homeserver: a.id,
        foreignUserId: carol.userId,
      });
      expect(events[1]?.event.value).toMatchObject({ username: "carol-renamed" });
      const introspected = await internal(b).introspect({
        sessionToken: first.session?.sessionToken ?? "",
      });
      expect(introspected).toMatchObject({ homeserver: a.id, foreignUserId: carol.userId });
    });

    it("verifies on B what A's SignToken signed, with LoginFederated's errors", async () => {
      const data = new TextEncoder().encode("guild sync from A's chat server");
      const token = await internal(a).signToken({ data });
      expect((await internal(b).verifyToken({ serverId: a.id, token })).data).toEqual(data);
      await expectRpcError(
        internal(b).verifyToken({
          serverId: a.id,
          token: { ...(token as Token), data: tamper(data, 3) },
        }),
        Code.Unauthenticated,
        "h.token-verify-failure",
      );
      await expectRpcError(
        internal(b).verifyToken({ serverId: a.id }),
        Code.InvalidArgument,
        "h.bad-token",
      );
      await expectRpcError(
        internal(b).verifyToken({ serverId: b.id, token }),
        Code.PermissionDenied,
        "h.host-not-allowed",
      );
    });
  });

  it("refuses a token meant for another server", async () => {
    const token = await federate("chat.example.org:2289");
    await expectRpcError(loginOnB(token), Code.Unauthenticated, "h.bad-token-audience");
  });

  it.each([
    ["no token", () => undefined, Code.InvalidArgument, "h.bad-token"],
    [
      "a 63-byte signature",
      (t: Token) => ({ ...t, sig: t.sig.slice(0, 63) }),
      Code.InvalidArgument,
      "h.bad-token-signature",
    ],
    [
      "one changed byte of data",
      (t: Token) => ({ ...t, data: tamper(t.data, 3) }),
      Code.Unauthenticated,
      "h.token-verify-failure",
    ],
    [
      "one changed byte of signature",
      (t: Token) => ({ ...t, sig: tamper(t.sig, 10) }),
      Code.Unauthenticated,
      "h.token-verify-failure",
    ],
    [
      "a signature by another key",
      (t: Token) => ({ ...t, sig: sign(t.data, generateKeyPair().secretKey) }),
      Code.Unauthenticated,
      "h.token-verify-failure",
    ],
  ] as const)("refuses %s", async (_what, change, code, identifier) => {
    const token = await federate(b.id);
    const changed = change(token) as Token | undefined;
    await expectRpcError(loginOnB(changed), code, identifier);
  });

  it("refuses correctly signed data that is not a TokenData", async () => {
    const data = new Uint8Array([0x0a, 0xff, 0xff]);
    const token = { sig: sign(data, a.ctx.serverKeys.current().secretKey), data } as Token;
    await expectRpcError(loginOnB(token), Code.InvalidArgument, "h.bad-token-data");
  });

  it("refuses a token older than FEDERATION_TOKEN_TTL", async () => {
    const token = await federate(b.id);
    b.clock.advance(5 * 60_000 + 31_000);
    try {
      await expectRpcError(loginOnB(token), Code.Unauthenticated, "h.token-expired");
    } finally {
      b.clock.advance(-(5 * 60_000 + 31_000));
    }
  });

  it("accepts an untimed token as other Harmony servers issue them, once", async () => {
    const data = toBinary(
      HarmonyTokenDataSchema,
      create(HarmonyTokenDataSchema, { userId: 4242n, serverId: b.id, username: "scherzo-user" }),
    );
    const token = { sig: sign(data, a.ctx.serverKeys.current().secretKey), data } as Token;
    const { session } = await loginOnB(token);
    expect(session?.userId).toBeGreaterThan(0n);
    await expectRpcError(loginOnB(token), Code.Unauthenticated, "h.token-replayed");
    // After one token lifetime the same bytes are accepted again: such a
    // server signs identical bytes every time (see README).
    b.clock.advance(5 * 60_000);
    expect((await b.ctx.lifecycle.runJobs())["federation.sweep"]).toBe(1);
    expect((await loginOnB(token)).session?.userId).toBe(session?.userId);
  });

  it("keeps users of two homeservers with the same numeric ID apart", async () => {
    const c = await start(await shared());
    const data = (username: string) =>
      toBinary(
        HarmonyTokenDataSchema,
        create(HarmonyTokenDataSchema, { userId: 7n, serverId: b.id, username }),
      );
    const fromA = data("seven-on-a");
    const fromC = data("seven-on-c");
    const onA = await loginOnB({
      sig: sign(fromA, a.ctx.serverKeys.current().secretKey),
      data: fromA,
    } as Token);
    const onC = await loginOnB(
      { sig: sign(fromC, c.ctx.serverKeys.current().secretKey), data: fromC } as Token,
      c.id,
    );
    expect(onA.session?.userId).not.toBe(onC.session?.userId);
  });

  it("picks up A's rotated key, fetching again at most once a minute", async () => {
    // A day on, B's cached key of A has expired: the next login fetches it anew.
    a.clock.advance(86_400_000);
    b.clock.advance(86_400_000);
    const before = await federate(b.id);
    await loginOnB(before); // B fetches A's key now and caches it
    await a.ctx.serverKeys.rotate();
    const after = await federate(b.id);
    // The cached key was fetched less than a minute ago: no refetch yet.
    await expectRpcError(loginOnB(after), Code.Unauthenticated, "h.token-verify-failure");
    b.clock.advance(61_000);
    a.clock.advance(61_000);
    const fresh = await federate(b.id);
    const { session } = await loginOnB(fresh);
    await b.client.checkLoggedIn({}, auth(session?.sessionToken ?? ""));
    expect((await a.client.key({})).key).toEqual(a.ctx.serverKeys.current().publicKey);
  });

  it("answers Unavailable when the homeserver cannot be reached", async () => {
    const d = await start(await shared());
    const data = toBinary(
      HarmonyTokenDataSchema,
      create(HarmonyTokenDataSchema, { userId: 9n, serverId: b.id, username: "gone" }),
    );
    const token = { sig: sign(data, d.ctx.serverKeys.current().secretKey), data } as Token;
    await d.server.close();
    const message = await expectRpcError(
      loginOnB(token, d.id),
      Code.Unavailable,
      "hrpc.unavailable",
    );
    expect(message).toBe(federationErrors.homeserverUnavailable.message);
  });

  it("lets only local users federate", async () => {
    const { session } = await loginOnB(await federate(b.id));
    await expectRpcError(
      b.client.federate({ serverId: a.id }, auth(session?.sessionToken ?? "")),
      Code.PermissionDenied,
      "h.not-local-user",
    );
    await expectRpcError(
      b.client.federate({ serverId: a.id }),
      Code.Unauthenticated,
      "h.blank-session",
    );
  });

  it("refuses malformed server IDs", async () => {
    await expectRpcError(
      a.client.federate({ serverId: "not a server" }, auth(alice.sessionToken)),
      Code.InvalidArgument,
      "h.invalid-server-id",
    );
  });

  describe("policy", () => {
    let secure: Homeserver | undefined;
    const secureLog = capturedLogger();
    const startSecure = async () =>
      start(await shared(), { FEDERATION_ALLOW_INSECURE: "false" }, { logger: secureLog.logger });

    it.each([
      [{ FEDERATION: "off" }, Code.PermissionDenied, "h.federation-disabled"],
      [{ FEDERATION_DENY: "chat.example.org:2289" }, Code.PermissionDenied, "h.host-not-allowed"],
      [{ FEDERATION_ALLOW: "other.example.org:443" }, Code.PermissionDenied, "h.host-not-allowed"],
    ])("with %j refuses Federate and LoginFederated", async (env, code, identifier) => {
      const s = await start(await shared(), env);
      const user = await register(s.client, newUser());
      await expectRpcError(
        s.client.federate({ serverId: "chat.example.org:2289" }, auth(user.sessionToken)),
        code,
        identifier,
      );
      const token = { sig: new Uint8Array(64), data: new Uint8Array([8, 1]) } as Token;
      await expectRpcError(
        s.client.loginFederated({ authToken: token, serverId: "chat.example.org:2289" }),
        code,
        identifier,
      );
    });

    it.each([
      "127.0.0.1:2289",
      "169.254.169.254:80",
      "10.0.0.1:443",
      "172.16.5.4:443",
      "192.168.1.1:443",
      "[::1]:443",
      "[fd00::1]:443",
      "[fe80::1]:443",
      "[::ffff:127.0.0.1]:443",
      "[::7f00:1]:443",
      "[::ffff:0:7f00:1]:443",
      "[64:ff9b::7f00:1]:443",
      "[2002:7f00:1::]:443",
      "192.0.2.1:443",
      "[100::1]:443",
      "http://chat.example.org:80",
    ])("without FEDERATION_ALLOW_INSECURE refuses %s before connecting", async (target) => {
      secure ??= await startSecure();
      const token = { sig: new Uint8Array(64), data: new Uint8Array([8, 1]) } as Token;
      const message = await expectRpcError(
        secure.client.loginFederated({ authToken: token, serverId: target }),
        Code.PermissionDenied,
        "h.host-not-allowed",
      );
      expect(message).toMatch(/not a public address|plain http/);
    });

    it("without FEDERATION_ALLOW_INSECURE answers a name that resolves to loopback as unreachable, not saying where it leads", async () => {
      secure ??= await startSecure();
      const token = { sig: new Uint8Array(64), data: new Uint8Array([8, 1]) } as Token;
      // localhost resolves through /etc/hosts, so no DNS query leaves the machine.
      const answer = await rpcError(
        secure.client.loginFederated({ authToken: token, serverId: "localhost:2289" }),
      );
      expect(answer).toEqual(unavailable);
      expect(secureLog.warnings("localhost:2289")).toMatchObject([
        {
          err: { message: expect.stringMatching(/^localhost resolves to .*not a public address$/) },
        },
      ]);
    });
  });

  describe("reaching other homeservers", () => {
    let e: Homeserver;
    const log = capturedLogger();
    let silent: Awaited<ReturnType<typeof silentPort>>;
    let http: Awaited<ReturnType<typeof fakeHttp>>;
    const token = { sig: new Uint8Array(64), data: new Uint8Array([8, 1]) } as Token;
    const loginOnE = (serverId: string, authToken: Token = token) =>
      e.client.loginFederated({ authToken, serverId });

    beforeAll(async () => {
      silent = await silentPort();
      http = await fakeHttp();
      e = await start(
        await shared(),
        { FEDERATION_TIMEOUT: "1s", FEDERATION_MAX_FETCHES: "1" },
        { logger: log.logger, resolveHost },
      );
    });
    afterAll(async () => {
      await silent.close();
      await http.close();
    });

    it("answers every failure to reach a homeserver alike, and logs what failed", async () => {
      const cases: [string, RegExp][] = [
        ["nowhere.invalid:443", /^could not resolve nowhere\.invalid: getaddrinfo ENOTFOUND/],
        [`127.0.0.1:${await freePort()}`, /ECONNREFUSED 127\.0\.0\.1/],
        [`127.0.0.1:${silent.port}`, /^no answer within 1000 ms$/],
        [`127.0.0.1:${http.port}`, /^it answered with Content-Type text\/html/],
      ];
      for (const [serverId, detail] of cases) {
        expect(await rpcError(loginOnE(serverId)), serverId).toEqual(unavailable);
        expect(log.warnings(serverId), serverId).toMatchObject([
          { err: { message: expect.stringMatching(detail) } },
        ]);
      }
    });

    it("remembers a failed fetch for FEDERATION_FETCH_FAILURE_TTL, then fetches again", async () => {
      const serverId = `remembered.loopback.test:${http.port}`;
      http.requests = 0;
      expect(await rpcError(loginOnE(serverId))).toEqual(unavailable);
      expect(http.requests).toBe(1);

      // The homeserver is back, but within a minute of the failure nobody asks it.
      const keys = generateKeyPair();
      http.answer = (res) => {
        res.writeHead(200, { "content-type": "application/hrpc" });
        res.end(toBinary(KeyResponseSchema, create(KeyResponseSchema, { key: keys.publicKey })));
      };
      e.clock.advance(59_000);
      expect(await rpcError(loginOnE(serverId))).toEqual(unavailable);
      expect(http.requests).toBe(1);

      e.clock.advance(1_000);
      const data = toBinary(
        HarmonyTokenDataSchema,
        create(HarmonyTokenDataSchema, { userId: 11n, serverId: e.id, username: "returning" }),
      );
      const { session } = await loginOnE(serverId, {
        sig: sign(data, keys.secretKey),
        data,
      } as Token);
      expect(session?.userId).toBeGreaterThan(0n);
      expect(http.requests).toBe(2);
    });

    it("makes one fetch for 20 concurrent logins naming one unknown server", async () => {
      const serverId = `crowded.loopback.test:${silent.port}`;
      silent.connections = 0;
      const answers = await Promise.all(
        Array.from({ length: 20 }, () => rpcError(loginOnE(serverId))),
      );
      for (const answer of answers) expect(answer).toEqual(unavailable);
      expect(silent.connections).toBe(1);
      expect(log.warnings(serverId)).toHaveLength(1);
    });

    it("answers Unavailable at once while FEDERATION_MAX_FETCHES fetches are in flight", async () => {
      http.requests = 0;
      const connected = once(silent.server, "connection");
      let settled = false;
      const first = rpcError(loginOnE(`slow.loopback.test:${silent.port}`)).finally(() => {
        settled = true;
      });
      await connected;
      expect(await rpcError(loginOnE(`other.loopback.test:${http.port}`))).toEqual(unavailable);
      expect(http.requests).toBe(0);
      expect(settled).toBe(false);
      // Rather than wait out FEDERATION_TIMEOUT: the first fails as any other.
      silent.hangUp();
      expect(await first).toEqual(unavailable);
      expect(log.warnings(`other.loopback.test:${http.port}`)).toMatchObject([
        { msg: expect.stringContaining("FEDERATION_MAX_FETCHES") },
      ]);
    });
  });
});
