import { connect as http2Connect } from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { encodeEnvelope } from "@connectrpc/connect/protocol";
import {
  endStreamFlag,
  endStreamFromJson,
  errorFromJsonBytes,
} from "@connectrpc/connect/protocol-connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse } from "@connectrpc/connect/protocol-grpc-web";
import { pino } from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { ErrorSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import {
  NextStepRequestSchema,
  StreamStepsRequestSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { sendRaw, sendWs } from "./helpers/wire.js";

/**
 * The error boundary's contract: every protocol × every kind of failure →
 * the code, the Harmony identifier and the log level. Requests are written by
 * hand (raw HTTP/1.1, raw HTTP/2, raw WebSocket) so that malformed ones reach
 * the server exactly as sent.
 */

type Protocol = "connect-json" | "connect-proto" | "grpc" | "grpc-web" | "hrpc";
const protocols: readonly Protocol[] = [
  "connect-json",
  "connect-proto",
  "grpc",
  "grpc-web",
  "hrpc",
];

interface Answer {
  readonly code: Code;
  readonly identifier: string | undefined;
  readonly status: number;
}

type LogLine = Record<string, unknown>;
const logs: LogLine[] = [];
const logWaiters: { match: (l: LogLine) => boolean; resolve: () => void }[] = [];
const logger = pino(
  { level: "debug" },
  {
    write(text: string) {
      const line = JSON.parse(text) as LogLine;
      logs.push(line);
      for (const w of logWaiters.filter((w) => w.match(line))) {
        logWaiters.splice(logWaiters.indexOf(w), 1);
        w.resolve();
      }
    },
  },
);
/** Resolves when a log line matching `match` is written (or already was). */
const logLine = (match: (l: LogLine) => boolean) =>
  logs.some(match)
    ? Promise.resolve()
    : new Promise<void>((resolve) => logWaiters.push({ match, resolve }));
const levelOf = { 20: "debug", 30: "info", 40: "warn", 50: "error" } as const;

let database: TestDatabase;
let ctx: AppContext;
let server: RunningServer;
/** When set, BeginAuth fails with this (an unexpected failure inside the handler). */
let beginAuthThrows: Error | undefined;

beforeAll(async () => {
  database = await pglite.open();
  const real = await createAppContext(
    testConfig({ SHUTDOWN_GRACE: "1s", READ_MAX_BYTES: "1024" }),
    {
      db: database.db,
      hasher: fastHasher,
      logger,
      background: false,
    },
  );
  ctx = {
    ...real,
    flows: {
      ...real.flows,
      begin: () => (beginAuthThrows ? Promise.reject(beginAuthThrows) : real.flows.begin()),
    },
  };
  server = await startServer(ctx);
});
afterAll(async () => {
  await server?.close();
  await ctx?.close();
  await database?.close();
});
beforeEach(() => {
  logs.length = 0;
  beginAuthThrows = undefined;
});

const path = (method: string) => `/protocol.auth.v1.AuthService/${method}`;
const frame = (flags: number, payload: Uint8Array) => {
  const out = new Uint8Array(payload.length + 5);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, 5);
  return out;
};
const contentTypes: Record<Exclude<Protocol, "hrpc">, string> = {
  "connect-json": "application/json",
  "connect-proto": "application/proto",
  grpc: "application/grpc",
  "grpc-web": "application/grpc-web+proto",
};

/** Sends a raw request and reads the code and identifier the protocol answered with. */
async function send(
  protocol: Protocol,
  method: string,
  body: Uint8Array,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const contentType = protocol === "hrpc" ? "application/hrpc" : contentTypes[protocol];
  if (protocol === "grpc")
    return sendGrpc(method, body, { "content-type": contentType, ...headers });
  const res = await fetch(`${server.url}${path(method)}`, {
    method: "POST",
    headers: { "content-type": contentType, ...headers },
    body,
  });
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (protocol === "hrpc" || res.headers.get("content-type") === "application/hrpc") {
    const error = res.status === 200 ? undefined : fromBinary(ErrorSchema, bytes);
    return { code: Code.Unknown, identifier: error?.identifier, status: res.status };
  }
  if (protocol === "grpc-web") return grpcWebAnswer(res, bytes);
  if (res.status === 200) return { code: 0 as Code, identifier: undefined, status: 200 };
  const error = errorFromJsonBytes(bytes, undefined, new Error("not JSON") as never);
  return {
    code: error.code,
    identifier: error.findDetails(ErrorSchema)[0]?.identifier,
    status: res.status,
  };
}

/** The frames of an enveloped body. */
function frames(bytes: Uint8Array): { flags: number; data: Uint8Array }[] {
  const out: { flags: number; data: Uint8Array }[] = [];
  for (let offset = 0; offset + 5 <= bytes.length; ) {
    const len = new DataView(bytes.buffer, bytes.byteOffset + offset + 1).getUint32(0);
    out.push({ flags: bytes[offset] ?? 0, data: bytes.subarray(offset + 5, offset + 5 + len) });
    offset += 5 + len;
  }
  return out;
}

/** A gRPC-Web answer: its status in the headers (trailers-only) or in the trailer frame. */
function grpcWebAnswer(res: Response, bytes: Uint8Array): Answer {
  let trailer = new Headers();
  for (const [key, value] of res.headers) trailer.set(key, value);
  const last = frames(bytes).find((f) => f.flags & trailerFlag);
  if (!trailer.has("grpc-status") && last) trailer = trailerParse(last.data);
  return fromTrailer(trailer, res.status);
}

/** A Connect stream's answer: the error in its end-of-stream frame. */
function connectStreamAnswer(res: Response, bytes: Uint8Array): Answer {
  const end = frames(bytes).find((f) => f.flags & endStreamFlag);
  const error = end ? endStreamFromJson(end.data).error : undefined;
  return {
    code: error?.code ?? (0 as Code),
    identifier: error?.findDetails(ErrorSchema)[0]?.identifier,
    status: res.status,
  };
}

function fromTrailer(trailer: Headers, status: number): Answer {
  const error = findTrailerError(trailer);
  return {
    code: error?.code ?? (0 as Code),
    identifier: error?.findDetails(ErrorSchema)[0]?.identifier,
    status,
  };
}

function sendGrpc(method: string, body: Uint8Array, headers: Record<string, string>) {
  return new Promise<Answer>((resolve, reject) => {
    const session = http2Connect(server.url);
    session.on("error", reject);
    const req = session.request({
      ":method": "POST",
      ":path": path(method),
      te: "trailers",
      ...headers,
    });
    const trailer = new Headers();
    let status = 0;
    req.on("response", (h) => {
      status = Number(h[":status"]);
      for (const [k, v] of Object.entries(h)) if (!k.startsWith(":")) trailer.set(k, String(v));
    });
    req.on("trailers", (t) => {
      for (const [k, v] of Object.entries(t)) trailer.set(k, String(v));
    });
    req.on("data", () => {});
    req.on("end", () => {
      session.close();
      resolve(fromTrailer(trailer, status));
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** A NextStep request body as each protocol frames it. */
function nextStepBody(protocol: Protocol, message: Uint8Array, json = '{"authId":"x"}') {
  switch (protocol) {
    case "connect-json":
      return new TextEncoder().encode(json);
    case "connect-proto":
    case "hrpc":
      return message;
    default:
      return frame(0, message);
  }
}

const logged = () =>
  logs
    .filter((l) => typeof l.identifier === "string" || l.msg === "rpc failed")
    .map((l) => ({ level: levelOf[l.level as keyof typeof levelOf], identifier: l.identifier }));

const undecodable = new Uint8Array([0x0a, 0xff]); // field 1, a length that runs past the end
const invalidUtf8 = new Uint8Array([0x0a, 0x02, 0xc3, 0x28]); // auth_id = invalid UTF-8
const endGroup = new Uint8Array([0x0c]); // an end-group tag with no group

describe.each(protocols)("%s", (protocol) => {
  const bad = protocol === "hrpc" ? 400 : undefined;

  it.each([
    ["a truncated length", undecodable],
    ["invalid UTF-8 in a string", invalidUtf8],
    ["a stray end-group tag", endGroup],
  ])("answers a body that does not decode (%s) as the client's mistake", async (_, message) => {
    const body =
      protocol === "connect-json"
        ? new TextEncoder().encode('{"authId": 12, ')
        : nextStepBody(protocol, message);
    const answer = await send(protocol, "NextStep", body);
    expect(answer.identifier).toBe("hrpc.http.bad-unary-request");
    if (protocol !== "hrpc") expect(answer.code).toBe(Code.InvalidArgument);
    else expect(answer.status).toBe(bad);
    expect(logged()).toEqual([{ level: "debug", identifier: "hrpc.http.bad-unary-request" }]);
  });

  it("answers a body over READ_MAX_BYTES with resource-exhausted", async () => {
    const big = toBinary(
      NextStepRequestSchema,
      create(NextStepRequestSchema, { authId: "x".repeat(2000) }),
    );
    const answer = await send(
      protocol,
      "NextStep",
      nextStepBody(protocol, big, JSON.stringify({ authId: "x".repeat(2000) })),
    );
    expect(answer.identifier).toBe("hrpc.resource-exhausted");
    if (protocol !== "hrpc") expect(answer.code).toBe(Code.ResourceExhausted);
    else expect(answer.status).toBe(429);
    expect(logged()).toEqual([{ level: "debug", identifier: "hrpc.resource-exhausted" }]);
  });

  it("answers an unknown method in the protocol's own terms", async () => {
    const answer = await send(protocol, "Nope", nextStepBody(protocol, new Uint8Array()));
    if (protocol === "hrpc") {
      expect(answer).toMatchObject({ status: 404, identifier: "hrpc.not-found" });
    } else {
      expect(answer).toMatchObject({
        code: Code.Unimplemented,
        identifier: "hrpc.not-implemented",
      });
    }
  });

  it("answers a path that does not decode (bad percent-encoding) as an unknown method", async () => {
    const answer = await send(protocol, "%E0%A4%A", nextStepBody(protocol, new Uint8Array(), "{}"));
    if (protocol === "hrpc") {
      expect(answer).toMatchObject({ status: 404, identifier: "hrpc.not-found" });
    } else {
      expect(answer).toMatchObject({
        code: Code.Unimplemented,
        identifier: "hrpc.not-implemented",
      });
    }
  });

  it("answers a domain error with its code and Harmony identifier", async () => {
    const message = toBinary(
      NextStepRequestSchema,
      create(NextStepRequestSchema, { authId: "Q".repeat(32) }),
    );
    const answer = await send(
      protocol,
      "NextStep",
      nextStepBody(protocol, message, `{"authId":"${"Q".repeat(32)}"}`),
    );
    expect(answer.identifier).toBe("h.bad-auth-id");
    if (protocol !== "hrpc") expect(answer.code).toBe(Code.NotFound);
    else expect(answer.status).toBe(400);
    expect(logged()).toEqual([{ level: "debug", identifier: "h.bad-auth-id" }]);
  });

  it("answers an unexpected failure as Internal, logging its cause once at error", async () => {
    beginAuthThrows = new Error("the disk caught fire");
    const answer = await send(
      protocol,
      "BeginAuth",
      nextStepBody(protocol, new Uint8Array(), "{}"),
    );
    expect(answer.identifier).toBe("hrpc.internal-server-error");
    if (protocol !== "hrpc") expect(answer.code).toBe(Code.Internal);
    else expect(answer.status).toBe(500);
    const errors = logs.filter((l) => l.level === 50);
    expect(errors).toHaveLength(1);
    expect(JSON.stringify(errors[0])).toContain("the disk caught fire");
  });

  it.skipIf(protocol === "hrpc")(
    "refuses a deadline beyond the longest flow, without arming it",
    async () => {
      const header = protocol.startsWith("connect")
        ? { "connect-timeout-ms": "9999999999" }
        : { "grpc-timeout": "99999999H" };
      const warnings: Error[] = [];
      const onWarning = (w: Error) => warnings.push(w);
      process.on("warning", onWarning);
      try {
        const answer = await send(
          protocol,
          "BeginAuth",
          nextStepBody(protocol, new Uint8Array(), "{}"),
          header,
        );
        expect(answer).toMatchObject({
          code: Code.InvalidArgument,
          identifier: "hrpc.http.bad-unary-request",
        });
        await new Promise((r) => setImmediate(r));
        expect(warnings.map((w) => w.name)).not.toContain("TimeoutOverflowWarning");
      } finally {
        process.off("warning", onWarning);
      }
    },
  );
});

describe("envelopes and content types", () => {
  it.each([
    ["grpc", 0x01],
    ["grpc", 0xff],
    ["grpc-web", 0x01],
    ["grpc-web", 0xff],
  ] as const)(
    "%s: a unary frame with flags 0x%s is the client's mistake",
    async (protocol, flags) => {
      const answer = await send(protocol, "BeginAuth", frame(flags, new Uint8Array()));
      expect(answer).toMatchObject({
        code: Code.InvalidArgument,
        identifier: "hrpc.http.bad-unary-request",
      });
      expect(logged()).toEqual([{ level: "debug", identifier: "hrpc.http.bad-unary-request" }]);
    },
  );

  it.each([
    ["connect", "application/connect+proto", 0x01],
    ["connect", "application/connect+proto", 0x02],
    ["grpc-web", "application/grpc-web+proto", 0xff],
  ] as const)(
    "%s: a StreamSteps request frame with flags 0x%s ends the stream with bad-streaming-request",
    async (_, contentType, flags) => {
      const message = toBinary(
        StreamStepsRequestSchema,
        create(StreamStepsRequestSchema, { authId: "Q".repeat(32) }),
      );
      const res = await fetch(`${server.url}${path("StreamSteps")}`, {
        method: "POST",
        headers: { "content-type": contentType },
        body: frame(flags, message),
      });
      const bytes = new Uint8Array(await res.arrayBuffer());
      const answer = contentType.startsWith("application/grpc-web")
        ? grpcWebAnswer(res, bytes)
        : connectStreamAnswer(res, bytes);
      expect(answer).toMatchObject({
        code: Code.InvalidArgument,
        identifier: "hrpc.http.bad-streaming-request",
      });
      expect(logged()).toEqual([{ level: "debug", identifier: "hrpc.http.bad-streaming-request" }]);
    },
  );

  it.each([
    ["connect-json", "application/jsonx"],
    ["grpc", "application/grpc+xml"],
    ["grpc-web", "application/grpc-web-text"],
  ] as const)(
    "%s: an unsupported variant (%s) is answered in the family's format",
    async (protocol, contentType) => {
      const answer = await send(protocol, "BeginAuth", new Uint8Array(), {
        "content-type": contentType,
      });
      expect(answer).toMatchObject({
        code: Code.InvalidArgument,
        identifier: "hrpc.http.bad-unary-request",
      });
    },
  );

  it.each([
    ["connect-json", "application/json:"],
    ["connect-proto", "application/proto x"],
    ["grpc", "application/grpc("],
    ["grpc-web", "application/grpc-web("],
  ] as const)(
    "%s: a Content-Type Fastify cannot parse (%s) is still answered in the family's format",
    async (protocol, contentType) => {
      const answer = await send(protocol, "BeginAuth", new Uint8Array(), {
        "content-type": contentType,
      });
      expect(answer).toMatchObject({
        code: Code.InvalidArgument,
        identifier: "hrpc.http.bad-unary-request",
      });
    },
  );

  it.each(["", "{", "not json"])(
    "an unknown method with the JSON body %j is answered not-implemented, not by a JSON parser",
    async (body) => {
      const answer = await send("connect-json", "Nope", new TextEncoder().encode(body));
      expect(answer).toMatchObject({
        code: Code.Unimplemented,
        identifier: "hrpc.not-implemented",
      });
    },
  );

  it.each(["application/hrpcx", "application/hrpc+json", "text/plain"])(
    "a Content-Type that is not exactly hRPC's (%s) is not served as hRPC",
    async (contentType) => {
      const res = await fetch(`${server.url}${path("BeginAuth")}`, {
        method: "POST",
        headers: { "content-type": contentType },
        body: new Uint8Array(),
      });
      expect(res.status).toBe(400);
      const error = fromBinary(ErrorSchema, new Uint8Array(await res.arrayBuffer()));
      expect(error.identifier).toBe("hrpc.http.bad-unary-request");
    },
  );

  it.each([
    ["connect-json", "content-encoding"],
    ["connect-proto", "content-encoding"],
    ["grpc", "grpc-encoding"],
    ["grpc-web", "grpc-encoding"],
  ] as const)("%s: %s IDENTITY is uncompressed, whatever its case", async (protocol, name) => {
    for (const value of ["IDENTITY", "Identity"]) {
      const answer = await send(
        protocol,
        "BeginAuth",
        nextStepBody(protocol, new Uint8Array(), "{}"),
        {
          [name]: value,
        },
      );
      expect(answer).toMatchObject({ code: 0, identifier: undefined });
    }
    expect(logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
  });

  it("refuses compressed requests it cannot admit with not-implemented", async () => {
    const answer = await send("grpc", "BeginAuth", frame(0, new Uint8Array()), {
      "grpc-encoding": "gzip",
    });
    expect(answer).toMatchObject({ code: Code.Unimplemented, identifier: "hrpc.not-implemented" });
  });
});

describe("requests whose Host header forms no URL", () => {
  it.each([
    ["BeginAuth", "application/json", "hrpc.http.bad-unary-request"],
    ["BeginAuth", "application/proto", "hrpc.http.bad-unary-request"],
    ["BeginAuth", "application/grpc-web+proto", "hrpc.http.bad-unary-request"],
    ["StreamSteps", "application/connect+proto", "hrpc.http.bad-streaming-request"],
  ])("%s as %s is answered as a malformed request", async (method, contentType, identifier) => {
    const answer = await sendRaw(
      server.url,
      {
        http: "1.1",
        method: "POST",
        path: path(method),
        headers: [
          ["content-type", contentType],
          ["host", "a b"],
        ],
        body: new Uint8Array(),
        writes: 1,
      },
      5_000,
    );
    expect(answer).toMatchObject({ code: Code.InvalidArgument, identifier });
    if (contentType === "application/json") expect(answer.status).toBe(400);
    expect(logged()).toEqual([{ level: "debug", identifier }]);
  });
});

describe("WebSocket handshakes ws itself refuses", () => {
  const handshake = {
    connection: "Upgrade",
    upgrade: "websocket",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
    "sec-websocket-protocol": "hrpc1",
  };
  it.each([
    ["a POST", "POST", {}],
    ["Upgrade: h2c", "GET", { upgrade: "h2c" }],
    ["a malformed Sec-WebSocket-Key", "GET", { "sec-websocket-key": "!" }],
    ["a malformed subprotocol list", "GET", { "sec-websocket-protocol": "hrpc1," }],
  ])("%s is answered with an hRPC error body", async (_, method, override) => {
    const answer = await sendWs(
      server.url,
      {
        method,
        path: path("StreamSteps"),
        headers: Object.entries({ ...handshake, ...override }),
        frames: [],
        ending: "close",
      },
      5_000,
    );
    expect(answer).toMatchObject({
      handshake: "refused",
      answer: { status: 400, identifier: "hrpc.http.bad-streaming-request" },
    });
    expect(logged()).toEqual([{ level: "debug", identifier: "hrpc.http.bad-streaming-request" }]);
  });
});

describe("cancelled streams", () => {
  it.each(["connect", "grpc-web", "grpc", "hrpc"] as const)(
    "%s: a client closing StreamSteps is logged at debug, never as an error",
    async (protocol) => {
      const authId = await ctx.flows.begin();
      const request = toBinary(
        StreamStepsRequestSchema,
        create(StreamStepsRequestSchema, { authId }),
      );
      await ctx.flows.advance(authId, { kind: "current" });
      if (protocol === "hrpc") {
        const ws = new WebSocket(
          `${server.url.replace(/^http/, "ws")}${path("StreamSteps")}`,
          "hrpc1",
        );
        await new Promise((r) => ws.once("open", r));
        const first = new Promise((r) => ws.once("message", r));
        ws.send(request);
        await first;
        ws.terminate();
      } else if (protocol === "connect" || protocol === "grpc-web") {
        const abort = new AbortController();
        const res = await fetch(`${server.url}${path("StreamSteps")}`, {
          method: "POST",
          headers: {
            "content-type":
              protocol === "connect" ? "application/connect+proto" : "application/grpc-web+proto",
          },
          body: encodeEnvelope(0, request),
          signal: abort.signal,
        });
        const reader = res.body?.getReader();
        await reader?.read();
        abort.abort();
      } else {
        const session = http2Connect(server.url);
        const req = session.request({
          ":method": "POST",
          ":path": path("StreamSteps"),
          "content-type": "application/grpc",
          te: "trailers",
        });
        req.end(frame(0, request));
        await new Promise((r) => req.once("data", r));
        req.close();
        session.close();
      }
      // The server notices the closed stream and ends the call.
      await logLine((l) => l.identifier === "hrpc.canceled");
      expect(logs.filter((l) => (l.level as number) >= 40)).toEqual([]);
    },
  );

  it("holds forty open streams without a MaxListenersExceededWarning", async () => {
    // Each call in flight listens on the server's shutdown signal (build-app.ts).
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    const abort = new AbortController();
    try {
      const opened = await Promise.all(
        // Forty: past the warning's threshold of 10, within LIMIT_STREAMS_PER_ADDRESS.
        Array.from({ length: 40 }, async () => {
          const authId = await ctx.flows.begin();
          await ctx.flows.advance(authId, { kind: "current" });
          const res = await fetch(`${server.url}${path("StreamSteps")}`, {
            method: "POST",
            headers: { "content-type": "application/connect+proto" },
            body: encodeEnvelope(
              0,
              toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId })),
            ),
            signal: abort.signal,
          });
          return res.status;
        }),
      );
      expect(opened.every((status) => status === 200)).toBe(true);
      await new Promise((r) => setImmediate(r));
      expect(warnings.map((w) => w.name)).not.toContain("MaxListenersExceededWarning");
    } finally {
      abort.abort();
      process.off("warning", onWarning);
    }
  });
});
