import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { once } from "node:events";
import { createServer, type IncomingMessage, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import type { FastifyInstance } from "fastify";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { ErrorSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import {
  AuthService,
  BeginAuthResponseSchema,
  NextStepRequestSchema,
  NextStepResponseSchema,
  StreamStepsRequestSchema,
  StreamStepsResponseSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import {
  adaptCaddyfile,
  type CaddyAddresses,
  type CaddyProcess,
  caddyVersion,
  startCaddy,
} from "./helpers/caddy.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import { bytes, choose, login, newUser, submitForm, text } from "./helpers/flow.js";
import { onFreePort, protocols, transportFactory } from "./helpers/server.js";

/*
 * deploy/Caddyfile, run as it is by a real Caddy in front of an in-process cadenza and a
 * stand-in chat server. The client connects from 127.0.0.2, so the address cadenza is told
 * (X-Forwarded-For) is not the one it is connected from (Caddy's, 127.0.0.1).
 */

const version = caddyVersion();
const CLIENT = "127.0.0.2";
const PROXY = "127.0.0.1";
const method = (name: string) => `/protocol.auth.v1.AuthService/${name}`;
/** How long any one thing through the proxy may take: a step, a handshake, an answer. */
const WAIT_MS = 5_000;
/** A flow, and so a StreamSteps stream, lives FLOW_TTL (15 minutes by default). */
const FLOW_TTL_NS = 15 * 60 * 1e9;

const skipped = "skipped: no caddy binary on PATH (.ci/run installs Debian's caddy package)";
if (!version) {
  // CI installs caddy; there a missing binary fails the run instead of passing it silently.
  if (process.env.CI) throw new Error(`test/proxy.test.ts would be ${skipped}`);
  console.warn(`test/proxy.test.ts ${skipped}`);
}

/** What a server behind the proxy was sent. */
interface Seen {
  readonly path: string;
  readonly httpVersion: string;
  readonly upgrade: boolean;
  readonly forwardedFor: string | undefined;
  readonly forwardedProto: string | undefined;
  /** The address the request came from: the proxy's. */
  readonly peer: string | undefined;
}

type NodeRequest = Pick<IncomingMessage, "url" | "httpVersion" | "headers" | "socket">;

function seen(req: NodeRequest): Seen {
  const header = (name: string) => {
    const value = req.headers[name];
    return Array.isArray(value) ? value.join(", ") : value;
  };
  return {
    path: req.url ?? "",
    httpVersion: req.httpVersion,
    upgrade: req.headers.upgrade !== undefined,
    forwardedFor: header("x-forwarded-for"),
    forwardedProto: header("x-forwarded-proto"),
    peer: req.socket?.remoteAddress,
  };
}

/**
 * Records every request cadenza's Fastify app is sent, WebSocket upgrades included, without
 * touching the product: Fastify announces each instance it creates on the
 * `fastify.initialization` diagnostics channel, and the test adds its own hook there.
 * Returns the unsubscribe function.
 */
function observeFastify(into: Seen[]): () => void {
  const onInit = (message: unknown): void => {
    const { fastify } = message as { fastify: FastifyInstance };
    fastify.addHook("onRequest", async (request) => {
      into.push(seen(request.raw));
    });
    fastify.server.on("upgrade", (req: IncomingMessage) => into.push(seen(req)));
  };
  subscribe("fastify.initialization", onInit);
  return () => unsubscribe("fastify.initialization", onInit);
}

interface ChatServer {
  /** `host:port`. */
  readonly address: string;
  readonly seen: Seen[];
  close(): Promise<void>;
}

/** A stand-in chat server: answers any path with its own name, and accepts any WebSocket. */
async function startChatServer(): Promise<ChatServer> {
  const requests: Seen[] = [];
  const server: Server = createServer((req, res) => {
    requests.push(seen(req));
    req.resume();
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ server: "chat", path: req.url }));
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on("upgrade", (req: IncomingMessage, socket, head) => {
    requests.push(seen(req));
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send("chat");
      ws.close(1000);
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${port}`,
    seen: requests,
    async close() {
      wss.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** `promise`, or a rejection naming `what` after `ms`. */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Items pushed by events, taken in order; `next` waits (bounded) for the next one. */
function inbox<T>() {
  const items: T[] = [];
  const waiting: (() => void)[] = [];
  let ended = false;
  const wake = () => {
    for (const resolve of waiting.splice(0)) resolve();
  };
  return {
    push(item: T) {
      items.push(item);
      wake();
    },
    end() {
      ended = true;
      wake();
    },
    async next(what: string): Promise<T> {
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        if (items.length > 0) return items.shift() as T;
        if (ended) throw new Error(`the stream ended before ${what}`);
        await within(
          deadline - Date.now(),
          new Promise<void>((resolve) => waiting.push(resolve)),
          what,
        );
      }
    },
  };
}

describe.skipIf(!version)(`deploy/Caddyfile in front of cadenza (${version ?? skipped})`, () => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  let chat: ChatServer;
  let proxy: CaddyProcess;
  let addresses: CaddyAddresses;
  const cadenza: Seen[] = [];
  const transports = transportFactory({ localAddress: CLIENT });

  beforeAll(async () => {
    database = await pglite.open();
    ctx = await createAppContext(testConfig({ SHUTDOWN_GRACE: "1s" }), {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    });
    const stopObserving = observeFastify(cadenza);
    try {
      server = await startServer(ctx);
    } finally {
      stopObserving();
    }
    chat = await startChatServer();
    // Caddy is told its port in its environment.
    proxy = await onFreePort((port) => {
      addresses = { cadenza: `127.0.0.1:${server.port}`, chat: chat.address, port };
      return startCaddy(addresses);
    });
  });
  afterAll(async () => {
    transports.closeAll();
    await proxy?.stop();
    await server?.close();
    await ctx?.close();
    await database?.close();
    await chat?.close();
  });

  /** What cadenza and the chat server are sent while `run` runs. */
  async function traffic(run: () => Promise<void>): Promise<{ cadenza: Seen[]; chat: Seen[] }> {
    const [c, h] = [cadenza.length, chat.seen.length];
    await run();
    return { cadenza: cadenza.slice(c), chat: chat.seen.slice(h) };
  }

  /** A plain HTTP/1.1 request to the proxy from CLIENT, its path sent exactly as given. */
  async function send(
    path: string,
    init: { method?: string; headers?: Record<string, string>; body?: Uint8Array | string } = {},
  ): Promise<{ status: number; contentType: string | undefined; body: Buffer }> {
    const req = request({
      host: PROXY,
      port: addresses.port,
      path,
      method: init.method ?? "GET",
      headers: init.headers,
      localAddress: CLIENT,
    });
    req.end(init.body);
    const [res] = (await within(WAIT_MS, once(req, "response"), `${path}: an answer`)) as [
      IncomingMessage,
    ];
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    return {
      status: res.statusCode ?? 0,
      contentType: res.headers["content-type"],
      body: Buffer.concat(chunks),
    };
  }

  /** A WebSocket to the proxy from CLIENT, offering the `hrpc1` subprotocol. */
  function openWebSocket(path: string) {
    const ws = new WebSocket(`ws://${PROXY}:${addresses.port}${path}`, ["hrpc1"], {
      localAddress: CLIENT,
    });
    const frames = inbox<Buffer>();
    ws.on("message", (data) => frames.push(data as Buffer));
    const closed = new Promise<number>((resolve) =>
      ws.on("close", (code) => {
        frames.end();
        resolve(code);
      }),
    );
    const opened = new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return {
      ws,
      frames,
      opened: within(WAIT_MS, opened, `${path}: the WebSocket handshake`),
      closed: () => within(WAIT_MS, closed, `${path}: the WebSocket close`),
    };
  }

  /** An hRPC unary call through the proxy; the decoded answer, or a throw with the identifier. */
  async function hrpcUnary(name: string, body: Uint8Array, headers: Record<string, string> = {}) {
    const res = await send(method(name), {
      method: "POST",
      headers: { "content-type": "application/hrpc", ...headers },
      body,
    });
    expect(res.contentType).toBe("application/hrpc");
    if (res.status !== 200) {
      const { identifier } = fromBinary(ErrorSchema, res.body);
      throw Object.assign(new Error(`${name}: ${res.status} ${identifier}`), {
        status: res.status,
        identifier,
      });
    }
    return res.body;
  }

  const nextStepBody = (init: MessageInitShape<typeof NextStepRequestSchema>) =>
    toBinary(NextStepRequestSchema, create(NextStepRequestSchema, init));

  /** Every request cadenza was sent came through the proxy, with the client's address. */
  function expectForwarded(requests: Seen[], httpVersion: string) {
    for (const r of requests) {
      expect(r).toMatchObject({
        httpVersion,
        forwardedFor: CLIENT,
        forwardedProto: "http",
        peer: PROXY,
      });
    }
  }

  describe.each(protocols)("%s through the proxy", (protocol) => {
    const client = () =>
      createClient(AuthService, transports.create(protocol, `http://${PROXY}:${addresses.port}`));

    it("registers with each step streamed as it happens, checks the session and logs in", async () => {
      const c = client();
      const user = newUser();
      const seenBy = await traffic(async () => {
        const { authId } = await c.beginAuth({});
        const steps = c.streamSteps({ authId })[Symbol.asyncIterator]();
        // Each step must arrive while the stream stays open, before the next NextStep is sent:
        // a proxy that buffered the response would hold it until the stream ended.
        const step = async (what: string) => {
          const { value } = await within(WAIT_MS, steps.next(), `the ${what} step`);
          return value?.step;
        };
        const first = step("initial choice");
        await c.nextStep({ authId });
        expect((await first)?.step.case).toBe("choice");
        await choose(c, authId, "register");
        expect((await step("register form"))?.step.case).toBe("form");
        const done = await submitForm(c, authId, [
          text(user.email),
          text(user.username),
          bytes(user.password),
        ]);
        expect(await step("session")).toEqual(done.step);
        expect((await within(WAIT_MS, steps.next(), "the end of the stream")).done).toBe(true);

        const session = done.step?.step.case === "session" ? done.step.step.value : undefined;
        await c.checkLoggedIn({}, { headers: { authorization: session?.sessionToken ?? "" } });
        await expectRpcError(c.checkLoggedIn({}), Code.Unauthenticated, "h.blank-session");
        expect((await login(c, user.email, user.password)).userId).toBe(session?.userId);
      });

      // gRPC reaches cadenza as h2c; everything else as HTTP/1.1.
      expectForwarded(seenBy.cadenza, protocol === "grpc/http2" ? "2.0" : "1.1");
      // Exactly the calls made, in whatever order the stream's and the others' arrived.
      expect(seenBy.cadenza.map((r) => r.path).sort()).toEqual(
        [
          ...["BeginAuth", "StreamSteps", "NextStep", "NextStep", "NextStep"], // registering
          ...["CheckLoggedIn", "CheckLoggedIn"],
          ...["BeginAuth", "NextStep", "NextStep", "NextStep"], // logging in
        ]
          .map(method)
          .sort(),
      );
      expect(seenBy.chat).toEqual([]);
    });
  });

  describe("hRPC through the proxy", () => {
    it("registers over unary POSTs with each step on a WebSocket stream, checks the session and logs in", async () => {
      const user = newUser();
      const seenBy = await traffic(async () => {
        const { authId } = fromBinary(
          BeginAuthResponseSchema,
          await hrpcUnary("BeginAuth", new Uint8Array()),
        );
        const stream = openWebSocket(method("StreamSteps"));
        await stream.opened;
        expect(stream.ws.protocol).toBe("hrpc1");
        stream.ws.send(
          toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId })),
        );
        const step = async (what: string) => {
          const frame = await stream.frames.next(`the ${what} step`);
          expect(frame[0]).toBe(0);
          return fromBinary(StreamStepsResponseSchema, frame.subarray(1)).step;
        };
        const nextStep = async (init: Parameters<typeof nextStepBody>[0]) =>
          fromBinary(NextStepResponseSchema, await hrpcUnary("NextStep", nextStepBody(init)));

        await nextStep({ authId });
        expect((await step("initial choice"))?.step.case).toBe("choice");
        await nextStep({ authId, step: { case: "choice", value: { choice: "register" } } });
        expect((await step("register form"))?.step.case).toBe("form");
        const done = await nextStep({
          authId,
          step: {
            case: "form",
            value: { fields: [text(user.email), text(user.username), bytes(user.password)] },
          },
        });
        expect(await step("session")).toEqual(done.step);
        expect(await stream.closed()).toBe(1000);

        const session = done.step?.step.case === "session" ? done.step.step.value : undefined;
        await hrpcUnary("CheckLoggedIn", new Uint8Array(), {
          authorization: session?.sessionToken ?? "",
        });
        await expect(hrpcUnary("CheckLoggedIn", new Uint8Array())).rejects.toMatchObject({
          status: 400,
          identifier: "h.blank-session",
        });

        const { authId: loginId } = fromBinary(
          BeginAuthResponseSchema,
          await hrpcUnary("BeginAuth", new Uint8Array()),
        );
        await nextStep({ authId: loginId });
        await nextStep({ authId: loginId, step: { case: "choice", value: { choice: "login" } } });
        const again = await nextStep({
          authId: loginId,
          step: { case: "form", value: { fields: [text(user.email), bytes(user.password)] } },
        });
        expect(again.step?.step.case === "session" && again.step.step.value.userId).toBe(
          session?.userId,
        );
      });

      expectForwarded(seenBy.cadenza, "1.1");
      expect(seenBy.cadenza.map((r) => r.path).sort()).toEqual(
        [
          ...["BeginAuth", "StreamSteps", "NextStep", "NextStep", "NextStep"], // registering
          ...["CheckLoggedIn", "CheckLoggedIn"],
          ...["BeginAuth", "NextStep", "NextStep", "NextStep"], // logging in
        ]
          .map(method)
          .sort(),
      );
      expect(seenBy.cadenza.filter((r) => r.upgrade).map((r) => r.path)).toEqual([
        method("StreamSteps"),
      ]);
      expect(seenBy.chat).toEqual([]);
    });
  });

  describe("everything else goes to the chat server", () => {
    it.each([
      ["GET", "/healthz"],
      ["GET", "/readyz"],
      ["GET", "/"],
      ["POST", "/protocol.chat.v1.ChatService/GetGuildList"],
      ["POST", "/protocol.auth.v1.AuthServiceX/BeginAuth"],
      ["POST", "/protocol.auth.v1.AuthService"],
      ["POST", "/protocol.auth.v1.AuthService/BeginAuth/more"],
      ["POST", "/PROTOCOL.AUTH.V1.AUTHSERVICE/BeginAuth"],
      ["POST", "//protocol.auth.v1.AuthService/BeginAuth"],
      ["POST", "/chat/../protocol.auth.v1.AuthService/BeginAuth"],
    ])("%s %s, with the client's address", async (verb, path) => {
      const seenBy = await traffic(async () => {
        const res = await send(path, {
          method: verb,
          ...(verb === "POST"
            ? { headers: { "content-type": "application/hrpc" }, body: new Uint8Array() }
            : {}),
        });
        expect(res.status).toBe(200);
        expect(JSON.parse(res.body.toString())).toEqual({ server: "chat", path });
      });
      expect(seenBy.cadenza).toEqual([]);
      expect(seenBy.chat).toEqual([
        {
          path,
          httpVersion: "1.1",
          upgrade: false,
          forwardedFor: CLIENT,
          forwardedProto: "http",
          peer: PROXY,
        },
      ]);
    });

    it("and so do other services' hRPC streams", async () => {
      const path = "/protocol.chat.v1.ChatService/StreamEvents";
      const seenBy = await traffic(async () => {
        const stream = openWebSocket(path);
        await stream.opened;
        expect((await stream.frames.next("the chat server's message")).toString()).toBe("chat");
        expect(await stream.closed()).toBe(1000);
      });
      expect(seenBy.cadenza).toEqual([]);
      expect(seenBy.chat).toEqual([
        expect.objectContaining({ path, upgrade: true, forwardedFor: CLIENT }),
      ]);
    });
  });

  it("tells cadenza the address the client connected from, not the X-Forwarded-For it sent", async () => {
    const seenBy = await traffic(async () => {
      const res = await send(method("BeginAuth"), {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-forwarded-for": "203.0.113.7",
          "x-forwarded-proto": "https",
        },
        body: "{}",
      });
      expect(res.status).toBe(200);
    });
    expect(seenBy.cadenza).toEqual([
      expect.objectContaining({ forwardedFor: CLIENT, forwardedProto: "http", peer: PROXY }),
    ]);
  });

  it("leaves an unknown AuthService method to cadenza, answered in the caller's protocol", async () => {
    const seenBy = await traffic(async () => {
      await expect(hrpcUnary("Nope", new Uint8Array())).rejects.toMatchObject({
        status: 404,
        identifier: "hrpc.not-found",
      });
      const res = await send(method("Nope"), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      expect(res.status).toBe(501);
      expect(JSON.parse(res.body.toString())).toMatchObject({ code: "unimplemented" });
    });
    expect(seenBy.cadenza.map((r) => r.path)).toEqual([method("Nope"), method("Nope")]);
    expect(seenBy.chat).toEqual([]);
  });

  it("holds no timeout shorter than a flow's life, and flushes every cadenza response at once", () => {
    const config = adaptCaddyfile(addresses) as {
      apps: { http: { servers: Record<string, Record<string, unknown>> } };
    };
    const servers = Object.values(config.apps.http.servers);
    // One site, SITE_ADDRESS.
    expect(servers).toHaveLength(1);
    const proxies: Record<string, unknown>[] = [];
    const walk = (value: unknown): void => {
      if (Array.isArray(value)) value.forEach(walk);
      else if (value && typeof value === "object") {
        const o = value as Record<string, unknown>;
        if (o.handler === "reverse_proxy") proxies.push(o);
        Object.values(o).forEach(walk);
      }
    };
    servers.forEach(walk);
    const longEnough = (v: unknown) =>
      v === undefined || (typeof v === "number" && v >= FLOW_TTL_NS);
    for (const s of servers) {
      expect(longEnough(s.read_timeout) && longEnough(s.write_timeout)).toBe(true);
    }
    const toCadenza = proxies.filter((p) =>
      JSON.stringify(p.upstreams).includes(addresses.cadenza),
    );
    expect(toCadenza).toHaveLength(2);
    for (const p of proxies) {
      expect(p.flush_interval).toBe(-1);
      expect(p.buffer_responses ?? p.response_buffers).toBeUndefined();
      const transport = (p.transport ?? {}) as Record<string, unknown>;
      for (const key of ["read_timeout", "write_timeout", "response_header_timeout"]) {
        expect({ [key]: longEnough(transport[key]) }).toEqual({ [key]: true });
      }
    }
  });
});
