import { request as httpRequest } from "node:http";
import { connect as http2Connect } from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { StreamStepsRequestSchema } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { newUser } from "./helpers/flow.js";
import { type StepStreamPath, stepStreamPaths } from "./helpers/server.js";
import { interpret, splitFrames } from "./helpers/wire.js";

/**
 * StreamSteps answers the same bytes on both of its paths: the direct one
 * (src/server/rpc/direct-stream.ts) and Connect's handler. Two servers on one
 * app, one per path, get the same raw requests over every protocol; their
 * answers (status, every header but Date, the body's frames, the trailers;
 * hRPC's frames and close code) must be equal. Only a session step differs
 * between two flows (its user ID and token), so its frame is compared by
 * length and flags.
 */

const path = "/protocol.auth.v1.AuthService/StreamSteps";
const utf8 = new TextEncoder();

type Wire =
  | "connect-proto/h1"
  | "connect-json/h1"
  | "connect-proto/h2"
  | "grpc/h2"
  | "grpc-json/h2"
  | "grpc-web/h1";
const wires: readonly Wire[] = [
  "connect-proto/h1",
  "connect-json/h1",
  "connect-proto/h2",
  "grpc/h2",
  "grpc-json/h2",
  "grpc-web/h1",
];

const contentTypes: Record<Wire, string> = {
  "connect-proto/h1": "application/connect+proto",
  "connect-json/h1": "application/connect+json",
  "connect-proto/h2": "application/connect+proto",
  "grpc/h2": "application/grpc",
  "grpc-json/h2": "application/grpc+json",
  "grpc-web/h1": "application/grpc-web+proto",
};

/** The request body a well-behaved client sends: one message in one frame. */
function requestBody(wire: Wire, authId: string): Uint8Array {
  const json = wire.includes("json");
  const message = json
    ? utf8.encode(JSON.stringify({ authId }))
    : toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId }));
  return encodeEnvelope(0, message);
}

/** What came back, with nothing that differs between two runs (Date) left in. */
interface Captured {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  frames: { flags: number; data: Buffer }[];
  trailers: Record<string, string | string[] | undefined>;
}

const withoutDate = (h: Record<string, string | string[] | undefined>) => {
  const { date: _date, ":status": _status, ...rest } = h;
  return rest;
};

function capture(
  base: string,
  wire: Wire,
  body: Uint8Array,
  extra: Record<string, string> = {},
  /** Called when the first bytes of the body arrive. */
  opened: () => void = () => {},
): Promise<Captured> {
  const headers = { "content-type": contentTypes[wire], ...extra };
  if (wire.endsWith("/h1")) {
    return new Promise((resolve, reject) => {
      const req = httpRequest(`${base}${path}`, { method: "POST", headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => {
          chunks.push(c);
          opened();
        });
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: withoutDate(res.headers),
            frames: framesOf(Buffer.concat(chunks)),
            trailers: res.trailers,
          }),
        );
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(body);
    });
  }
  return new Promise((resolve, reject) => {
    const session = http2Connect(base);
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ":path": path, te: "trailers", ...headers });
    const chunks: Buffer[] = [];
    let status = 0;
    let head: Captured["headers"] = {};
    let trailers: Captured["trailers"] = {};
    req.on("response", (h) => {
      status = Number(h[":status"]);
      head = withoutDate(h);
    });
    req.on("trailers", (t) => {
      trailers = withoutDate(t);
    });
    req.on("data", (c: Buffer) => {
      chunks.push(c);
      opened();
    });
    req.on("end", () => {
      session.close();
      resolve({ status, headers: head, frames: framesOf(Buffer.concat(chunks)), trailers });
    });
    req.on("error", reject);
    req.end(body);
  });
}

const framesOf = (bytes: Buffer) =>
  splitFrames(bytes).map((f) => ({ flags: f.flags, data: Buffer.from(f.data) }));

/** What an answer means: its Harmony identifier (or "success"). */
function meaning(c: Captured): string | undefined {
  const headers = (h: Captured["headers"]) =>
    new Headers(
      Object.entries(h).flatMap(([k, v]) =>
        v === undefined
          ? []
          : Array.isArray(v)
            ? v.map((x) => [k, x] as [string, string])
            : [[k, v] as [string, string]],
      ),
    );
  const body = Buffer.concat(c.frames.map((f) => Buffer.from(encodeEnvelope(f.flags, f.data))));
  const answer = interpret(c.status, headers(c.headers), headers(c.trailers), body);
  return answer.kind === "success" ? "success" : answer.identifier;
}

/** An hRPC stream: the frames it got and how it was closed. */
function captureWs(
  base: string,
  request: Uint8Array | string,
  opened: () => void = () => {},
): Promise<{ frames: Buffer[]; code: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace(/^http/, "ws")}${path}`, "hrpc1");
    const frames: Buffer[] = [];
    ws.on("message", (data) => {
      frames.push(data as Buffer);
      opened();
    });
    ws.once("open", () => ws.send(request));
    ws.once("close", (code) => resolve({ frames, code }));
    ws.once("error", reject);
  });
}

/**
 * The frames with the session step's (its user ID and token differ between
 * two flows, and in JSON so does its length) replaced by its flags.
 */
const sessionMasked = (frames: { flags: number; data: Buffer }[], sessionAt: number) =>
  frames.map((f, i) => (i === sessionAt ? { flags: f.flags } : f));

describe.each(backends)("StreamSteps on both paths, on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  const servers = {} as Record<StepStreamPath, RunningServer>;

  beforeAll(async () => {
    database = await backend.open();
    ctx = await createAppContext(testConfig({ SHUTDOWN_GRACE: "1s", READ_MAX_BYTES: "1024" }), {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    });
    for (const streamSteps of stepStreamPaths) {
      servers[streamSteps] = await startServer(ctx, { streamSteps });
    }
  });
  afterAll(async () => {
    for (const s of Object.values(servers)) await s.close();
    await ctx?.close();
    await database?.close();
  });

  /** A flow that has shown its initial choice and the login form. */
  async function flowAtLogin(): Promise<string> {
    const authId = await ctx.flows.begin();
    await ctx.flows.advance(authId, { kind: "current" });
    await ctx.flows.advance(authId, { kind: "choice", choice: "login" });
    return authId;
  }

  /** Runs `scenario` against each path; its answers must be equal. */
  async function same<T>(scenario: (url: string) => Promise<T>): Promise<T> {
    const direct = await scenario(servers.direct.url);
    const pipeline = await scenario(servers.pipeline.url);
    expect(direct).toEqual(pipeline);
    return direct;
  }

  describe.each(wires)("%s", (wire) => {
    const timeout = wire.startsWith("connect")
      ? { "connect-timeout-ms": "300" }
      : { "grpc-timeout": "300m" };

    it("an unknown auth_id", async () => {
      const answer = await same((url) => capture(url, wire, requestBody(wire, "Z".repeat(32))));
      expect(meaning(answer)).toBe("h.bad-auth-id");
    });

    it("the steps so far, then the deadline the client set", async () => {
      const answer = await same(async (url) =>
        capture(url, wire, requestBody(wire, await flowAtLogin()), timeout),
      );
      expect(answer.frames.filter((f) => f.flags === 0)).toHaveLength(2);
      expect(meaning(answer)).toBe("hrpc.deadline-exceeded");
    });

    it("every step through to the session, then a clean end", async () => {
      const answer = await same(async (url) => {
        const authId = await flowAtLogin();
        await ctx.flows.advance(authId, { kind: "back" });
        await ctx.flows.advance(authId, { kind: "choice", choice: "register" });
        const streamed = capture(url, wire, requestBody(wire, authId));
        const user = newUser();
        await ctx.flows.advance(authId, {
          kind: "form",
          values: [
            { kind: "string", value: user.email },
            { kind: "string", value: user.username },
            { kind: "bytes", value: utf8.encode(user.password) },
          ],
        });
        const got = await streamed;
        return { ...got, frames: sessionMasked(got.frames, 4), meaning: meaning(got) };
      });
      expect(answer.frames.filter((f) => f.flags === 0)).toHaveLength(5);
      expect(answer.meaning).toBe("success");
    });

    const bad = "hrpc.http.bad-streaming-request";
    const one = () => requestBody(wire, "A".repeat(32));
    it.each([
      ["no message", () => new Uint8Array(), bad],
      ["two messages", () => Buffer.concat([one(), one()]), bad],
      ["a compressed-flag frame", () => Buffer.from([1, ...one().subarray(1)]), bad],
      ["a frame longer than its body", () => one().subarray(0, 10), bad],
      ["an undecodable message", () => encodeEnvelope(0, new Uint8Array([0x0a, 0xff, 0xff])), bad],
      [
        "a message over READ_MAX_BYTES",
        () => encodeEnvelope(0, new Uint8Array(2000)),
        "hrpc.resource-exhausted",
      ],
    ])("a request with %s", async (_what, body, identifier) => {
      expect(meaning(await same((url) => capture(url, wire, body())))).toBe(identifier);
    });

    it("a deadline header that is not one", async () => {
      const soon = wire.startsWith("connect")
        ? { "connect-timeout-ms": "soon" }
        : { "grpc-timeout": "soon" };
      const answer = await same((url) => capture(url, wire, one(), soon));
      expect(meaning(answer)).toBe("hrpc.http.bad-streaming-request");
    });
  });

  describe("hRPC", () => {
    const message = (authId: string) =>
      toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId }));

    it("an unknown auth_id", async () => {
      const answer = await same((url) => captureWs(url, message("Z".repeat(32))));
      expect(answer.frames).toHaveLength(1);
    });

    it("an undecodable request, and a text one", async () => {
      await same((url) => captureWs(url, new Uint8Array([0x0a, 0xff, 0xff])));
      await same((url) => captureWs(url, "hello"));
    });

    it("every step through to the session, then a clean close", async () => {
      const answer = await same(async (url) => {
        const authId = await flowAtLogin();
        await ctx.flows.advance(authId, { kind: "back" });
        await ctx.flows.advance(authId, { kind: "choice", choice: "register" });
        const streamed = captureWs(url, message(authId));
        const user = newUser();
        await ctx.flows.advance(authId, {
          kind: "form",
          values: [
            { kind: "string", value: user.email },
            { kind: "string", value: user.username },
            { kind: "bytes", value: utf8.encode(user.password) },
          ],
        });
        const got = await streamed;
        return {
          code: got.code,
          frames: got.frames.map((f, i) => (i === 4 ? { opcode: f[0] } : f)),
        };
      });
      expect(answer.code).toBe(1000);
    });
  });

  it("ends open streams the same way on shutdown, on every protocol", async () => {
    const open = async (url: string, server: RunningServer) => {
      const authIds = await Promise.all([...wires, "hrpc"].map(() => flowAtLogin()));
      const opened: Promise<void>[] = [];
      const signal = () => {
        let done: () => void = () => {};
        opened.push(new Promise<void>((resolve) => (done = resolve)));
        return done;
      };
      const answers = Promise.all([
        ...wires.map((wire, i) =>
          capture(url, wire, requestBody(wire, authIds[i] ?? ""), {}, signal()),
        ),
        captureWs(
          url,
          toBinary(
            StreamStepsRequestSchema,
            create(StreamStepsRequestSchema, { authId: authIds.at(-1) ?? "" }),
          ),
          signal(),
        ),
      ]);
      // Every stream has shown its flow's steps, so each is open when shutdown begins.
      await Promise.all(opened);
      await server.close();
      return answers;
    };
    const direct = await open(servers.direct.url, servers.direct);
    const pipeline = await open(servers.pipeline.url, servers.pipeline);
    expect(direct).toEqual(pipeline);
    const http = direct.slice(0, wires.length) as Captured[];
    expect(http.map(meaning)).toEqual(wires.map(() => "hrpc.unavailable"));
  });
});
