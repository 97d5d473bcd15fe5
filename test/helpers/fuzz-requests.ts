import type { DescMethod } from "@bufbuild/protobuf";
import fc from "fast-check";
import { AccountService } from "../../src/gen/cadenza/account/v1/account_pb.js";
import { PasskeyService } from "../../src/gen/cadenza/passkey/v1/passkey_pb.js";
import { AuthService } from "../../src/gen/protocol/auth/v1/auth_pb.js";
import {
  binaryBody,
  concat,
  envelopes,
  type FuzzWorld,
  jsonBody,
  u32,
  utf8,
  validBinary,
  validJson,
  weighted,
} from "./fuzz-bodies.js";
import type { Header, RawRequest, WsFrame, WsRequest } from "./wire.js";

/**
 * fast-check generators of requests for every method of the public port (read
 * from its descriptor) and for paths that are none, in every protocol
 * cadenza serves: bodies from fuzz-bodies.ts, headers near the real ones,
 * paths and verbs, WebSocket handshakes and frames; two in five
 * well-formed, the rest hostile.
 */

export type { FuzzWorld } from "./fuzz-bodies.js";

export const fuzzProtocols = [
  "connect-json",
  "connect-proto",
  "connect-stream",
  "grpc",
  "grpc-web",
  "hrpc",
  "hrpc-ws",
] as const;
export type FuzzProtocol = (typeof fuzzProtocols)[number];

export type FuzzCase =
  | { readonly kind: "http"; readonly request: RawRequest }
  | {
      readonly kind: "ws";
      readonly request: WsRequest;
      /** Whether a frame RFC 6455 forbids (or one over the size limit) was sent. */
      readonly violation: boolean;
    };

/** Every method the public port serves: Harmony's AuthService and cadenza's own public services. */
export const methods: readonly DescMethod[] = [
  ...AuthService.methods,
  ...AccountService.methods,
  ...PasskeyService.methods,
];
export const methodPath = (m: DescMethod) => `/${m.parent.typeName}/${m.name}`;
const methodPaths = new Set(methods.map(methodPath));
/** Whether a request path (its query aside) is one of the service's methods. */
export const isMethodPath = (path: string) => methodPaths.has(path.split("?", 1)[0] ?? "");
const streamSteps: DescMethod = (() => {
  const m = methods.find((m) => m.methodKind === "server_streaming");
  if (!m) throw new Error("AuthService has no streaming method");
  return m;
})();

// ---------------------------------------------------------------- strings

/** Printable ASCII, what any HTTP client may put in a header. */
const headerChar = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c));
const headerText = (maxLength = 40) => fc.string({ unit: headerChar, maxLength });
const tokenChar = fc.constantFrom(
  ..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!#$&'*+^`|",
);
const token = (minLength = 1, maxLength = 20) =>
  fc.string({ unit: tokenChar, minLength, maxLength });

// ---------------------------------------------------------------- headers

const canonicalTypes: Record<Exclude<FuzzProtocol, "hrpc-ws">, readonly string[]> = {
  "connect-json": ["application/json", "application/json; charset=utf-8"],
  "connect-proto": ["application/proto"],
  "connect-stream": ["application/connect+json", "application/connect+proto"],
  grpc: ["application/grpc", "application/grpc+proto", "application/grpc+json"],
  "grpc-web": ["application/grpc-web", "application/grpc-web+proto", "application/grpc-web+json"],
  hrpc: ["application/hrpc"],
};
const nearTypes = [
  "application/grpc+xml",
  "application/grpc-web-text",
  "application/grpc-web-text+proto",
  "application/grpcx",
  "application/grpc-webx",
  "application/hrpcx",
  "application/hrpc+json",
  "application/hrpc+proto",
  "application/connect+xml",
  "application/connect",
  "application/jsonx",
  "application/json5",
  "application/protobuf",
  "application/x-protobuf",
  "application/proto3",
  "application/json; charset=latin1",
  "application/json;charset=utf-16",
  "text/plain",
  "text/json",
  "application/octet-stream",
  "application/x-www-form-urlencoded",
  "*/*",
  "",
];
const mixedCase = (s: string) =>
  fc
    .array(fc.boolean(), { minLength: s.length, maxLength: s.length })
    .map((up) => [...s].map((c, i) => (up[i] ? c.toUpperCase() : c.toLowerCase())).join(""));
const withParameter = (s: string) =>
  fc
    .constantFrom(
      "; charset=utf-8",
      ";charset=UTF-8",
      "; charset=binary",
      "; q=1",
      ";",
      " ; charset=utf-8",
      ';charset="utf-8"',
    )
    .map((p) => `${s}${p}`);

function contentTypeFor(protocol: Exclude<FuzzProtocol, "hrpc-ws">): fc.Arbitrary<string> {
  const own = fc.constantFrom(...canonicalTypes[protocol]);
  const all = fc.constantFrom(...Object.values(canonicalTypes).flat());
  return weighted<string>(
    [14, own],
    [2, own.chain(mixedCase)],
    [2, own.chain(withParameter)],
    [1, all],
    [1, fc.tuple(own, headerText(8)).map(([t, junk]) => `${t}${junk}`)],
    [3, fc.constantFrom(...nearTypes)],
    [1, headerText(30)],
  );
}

const timeoutHeader = weighted<Header>(
  [
    3,
    fc
      .constantFrom(
        "1",
        "5",
        "50",
        "500",
        "2000",
        "0",
        "-1",
        "abc",
        "1.5",
        "1e3",
        "9999999999",
        "99999999999",
        "960000",
        "960001",
        "00000000001",
        "",
      )
      .map((v): Header => ["connect-timeout-ms", v]),
  ],
  [
    3,
    fc
      .constantFrom(
        "1m",
        "5m",
        "100m",
        "1S",
        "2S",
        "1000u",
        "5000000n",
        "1M",
        "16M",
        "17M",
        "1H",
        "99999999H",
        "123456789S",
        "1",
        "S",
        "1s",
        "-1S",
        "1.5S",
        "0m",
        "0n",
        "",
      )
      .map((v): Header => ["grpc-timeout", v]),
  ],
  [1, fc.stringMatching(/^\d{1,12}$/).map((v): Header => ["connect-timeout-ms", v])],
  [
    1,
    fc
      .tuple(fc.nat(99_999_999), fc.constantFrom("H", "M", "S", "m", "u", "n"))
      .map(([n, u]): Header => ["grpc-timeout", `${n}${u}`]),
  ],
);

const encodingHeader = fc
  .tuple(
    fc.constantFrom(
      "grpc-encoding",
      "content-encoding",
      "connect-content-encoding",
      "grpc-accept-encoding",
      "accept-encoding",
      "connect-accept-encoding",
    ),
    weighted<string>(
      [
        4,
        fc.constantFrom(
          "identity",
          "IDENTITY",
          "gzip",
          "br",
          "deflate",
          "zstd",
          "",
          "gzip, identity",
          "*",
        ),
      ],
      [1, token()],
    ),
  )
  .map(([n, v]): Header => [n, v]);

const hugeValue = fc
  .tuple(fc.integer({ min: 1024, max: 8000 }), fc.constantFrom("a", "=", " ", "\t", "%", "Z9"))
  .map(([n, c]) => `v${c.repeat(Math.ceil(n / c.length))}v`);

function authorization(world: FuzzWorld): fc.Arbitrary<string> {
  const real = fc.constantFrom(...world.sessionTokens);
  return weighted<string>(
    [3, real],
    [2, real.map((t) => `Bearer ${t}`)],
    [1, real.map((t) => `bearer   ${t}  `)],
    [1, real.map((t) => `${t.slice(0, -1)}${t.endsWith("A") ? "B" : "A"}`)],
    [2, headerText(60)],
    [1, headerText(40).map((t) => `Bearer ${t}`)],
    [1, fc.constantFrom("Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "null", "%00")],
    [1, hugeValue],
  );
}

const forbiddenOnHttp2 = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "upgrade",
  "te",
  "host", // :authority stands for it
]);
const extraHeader = fc.oneof(
  fc.tuple(fc.stringMatching(/^x-[a-z0-9-]{1,20}$/), headerText()),
  fc.tuple(
    fc.constantFrom(
      "connect-protocol-version",
      "grpc-message",
      "grpc-status",
      "grpc-status-details-bin",
      "accept",
      "origin",
      "x-grpc-web",
      "x-user-agent",
      "hrpc-version",
      "sec-websocket-protocol",
      "cookie",
      "te",
    ),
    weighted<string>([1, fc.constantFrom("1", "2", "trailers", "")], [2, headerText()]),
  ),
  fc.tuple(fc.constant("x-huge"), hugeValue),
  fc.tuple(
    fc.constant("host"),
    weighted<string>(
      [
        2,
        fc.constantFrom("a b", "[::1", "x:99999", "", "exa mple.org:80", "h@st", "%zz", "[", "::"),
      ],
      [1, fc.domain()],
      [1, headerText(20)],
    ),
  ),
);

/** Every header of a request but its Content-Type. */
function commonHeaders(world: FuzzWorld, http: "1.1" | "2"): fc.Arbitrary<Header[]> {
  return fc
    .record({
      timeout: weighted<Header | null>([2, fc.constant(null)], [1, timeoutHeader]),
      encoding: weighted<Header | null>([4, fc.constant(null)], [1, encodingHeader]),
      authorization: fc.option(authorization(world), { freq: 2 }),
      extra: fc.array(extraHeader, { maxLength: 2 }),
    })
    .map(({ timeout, encoding, authorization, extra }) => {
      const headers: Header[] = [];
      if (timeout) headers.push(timeout);
      if (encoding) headers.push(encoding);
      if (authorization !== null) headers.push(["authorization", authorization]);
      for (const [name, value] of extra) {
        if (headers.some(([n]) => n === name)) continue;
        if (http === "2" && forbiddenOnHttp2.has(name) && !(name === "te" && value === "trailers"))
          continue;
        headers.push([name, value]);
      }
      // Node refuses header sections over 16 KiB: keep one huge value at most.
      let huge = false;
      return headers.filter(([, v]) => {
        if (v.length < 1024) return true;
        if (huge) return false;
        huge = true;
        return true;
      });
    });
}

// ---------------------------------------------------------------- paths

const unknownPath = fc.oneof(
  token(1, 20).map((n) => `/${AuthService.typeName}/${n}`),
  fc.constantFrom(...methods).map((m) => `/${AuthService.typeName}/${m.name.toLowerCase()}`),
  fc.constantFrom(...methods).map((m) => `${methodPath(m)}/`),
  fc.constantFrom(...methods).map((m) => `${methodPath(m)}/x`),
  fc.constantFrom(...methods).map((m) => `/protocol.auth.v2.AuthService/${m.name}`),
  fc.constantFrom(...methods).map((m) => `/${m.name}`),
  fc.constantFrom(
    "/",
    "/protocol.auth.v1.AuthService",
    "/protocol.auth.v1.AuthService/",
    "/grpc.health.v1.Health/Check",
    "/protocol.auth.v1.AuthService/Begin%41uth",
    "/protocol.auth.v1.AuthService/%E0%A4%A",
    "/%zz",
  ),
  fc
    .webPath()
    .map((p) => (p.startsWith("/") ? p : `/${p}`))
    .filter((p) => !/^\/(healthz|readyz)\b/.test(p)),
);
const query = fc.constantFrom(
  "?",
  "?encoding=json&message=%7B%7D",
  "?connect=v1&encoding=proto&base64=1&message=",
  "?x=%ZZ",
  "?a=1&a=2",
);

function pathFor(candidates: readonly DescMethod[]): fc.Arbitrary<string> {
  return weighted<string>(
    [16, fc.constantFrom(...candidates).map(methodPath)],
    [1, fc.tuple(fc.constantFrom(...methods), query).map(([m, q]) => `${methodPath(m)}${q}`)],
    [3, unknownPath],
  );
}

const httpMethod = weighted<string>(
  [30, fc.constant("POST")],
  [1, fc.constantFrom("GET", "PUT", "DELETE", "PATCH", "OPTIONS")],
);

// ---------------------------------------------------------------- requests

/** The method a path names, or a random one for a path that names none. */
const methodAt = (path: string, fallback: DescMethod) =>
  methods.find((m) => methodPath(m) === path.split("?", 1)[0]) ?? fallback;

const honestFrame = (p: Uint8Array) => concat([[0, ...u32(p.length)], p]);

/**
 * A request any client of the protocol could send: its own Content-Type, a
 * POST of a valid message (framed honestly), a real session or none, a sane
 * deadline or none. These get past the boundary, into the domain.
 */
function wellFormedHttp(
  protocol: Exclude<FuzzProtocol, "hrpc-ws">,
  world: FuzzWorld,
): fc.Arbitrary<FuzzCase> {
  const framed = protocol === "grpc" || protocol === "grpc-web" || protocol === "connect-stream";
  const candidates =
    protocol === "connect-stream"
      ? [streamSteps]
      : framed
        ? methods
        : methods.filter((m) => m.methodKind === "unary");
  const http = protocol === "grpc" ? "2" : "1.1";
  return fc
    .record({
      method: fc.constantFrom(...candidates),
      contentType: fc.constantFrom(...canonicalTypes[protocol]),
      authorization: weighted<string | null>(
        [3, fc.constantFrom(...world.sessionTokens)],
        [1, fc.constant(null)],
      ),
      timeout: weighted<Header | null>(
        [3, fc.constant(null)],
        [
          1,
          fc.constant<Header>(
            protocol.startsWith("connect")
              ? ["connect-timeout-ms", "5000"]
              : ["grpc-timeout", "5S"],
          ),
        ],
      ),
    })
    .chain(({ method, contentType, authorization, timeout }) => {
      const message = /json/.test(contentType)
        ? validJson(method.input, world).map(utf8)
        : validBinary(method.input, world);
      return message.map((bytes): FuzzCase => {
        const headers: Header[] = [["content-type", contentType]];
        if (protocol === "grpc") headers.push(["te", "trailers"]);
        if (authorization !== null) headers.push(["authorization", authorization]);
        if (timeout !== null) headers.push(timeout);
        return describedCase({
          kind: "http",
          request: {
            http,
            method: "POST",
            path: methodPath(method),
            headers,
            body: framed ? honestFrame(bytes) : bytes,
            writes: 1,
          },
        });
      });
    });
}

/** A request with anything wrong with it: path, verb, Content-Type, body, framing, headers. */
function hostileHttp(
  protocol: Exclude<FuzzProtocol, "hrpc-ws">,
  world: FuzzWorld,
): fc.Arbitrary<FuzzCase> {
  const framed = protocol === "grpc" || protocol === "grpc-web" || protocol === "connect-stream";
  const candidates = protocol === "connect-stream" ? [streamSteps, ...methods] : methods;
  const http = weighted<"1.1" | "2">(
    [protocol === "grpc" ? 1 : 3, fc.constant("1.1" as const)],
    [protocol === "grpc" ? 9 : 1, fc.constant("2" as const)],
  );
  return fc
    .record({
      http,
      verb: httpMethod,
      path: pathFor(candidates),
      fallback: fc.constantFrom(...methods),
      contentType: fc.option(contentTypeFor(protocol), { freq: 25 }),
      writes: weighted<number>([4, fc.constant(1)], [1, fc.integer({ min: 2, max: 4 })]),
    })
    .chain(({ http, verb, path, fallback, contentType, writes }) => {
      const input = methodAt(path, fallback).input;
      const json = contentType !== null && /json/i.test(contentType);
      const message = json ? jsonBody(input, world) : binaryBody(input, world);
      const body = framed
        ? envelopes(
            weighted<Uint8Array>(
              [4, message],
              [1, json ? binaryBody(input, world) : jsonBody(input, world)],
            ),
            world.readMaxBytes,
          )
        : message;
      const grpcHeaders: Header[] = protocol === "grpc" && http === "2" ? [["te", "trailers"]] : [];
      return fc.tuple(body, commonHeaders(world, http)).map(([bytes, headers]): FuzzCase => {
        const all: Header[] = [...grpcHeaders, ...headers];
        if (contentType !== null) all.unshift(["content-type", contentType]);
        const noBody = verb === "GET" || verb === "OPTIONS";
        return describedCase({
          kind: "http",
          request: {
            http,
            method: verb,
            path,
            headers: all,
            body: noBody ? new Uint8Array() : bytes,
            writes,
          },
        });
      });
    });
}

// ---------------------------------------------------------------- WebSockets

const mask = fc.uint8Array({ minLength: 4, maxLength: 4 });
const frame = (
  opcode: number,
  payload: Uint8Array,
  m: Uint8Array,
  fin = true,
  rsv = 0,
): WsFrame => ({
  fin,
  rsv,
  opcode,
  payload,
  mask: m,
});

/** Client messages: the request (or not), text, pings, fragments, and frames RFC 6455 forbids. */
function wsMessage(world: FuzzWorld): fc.Arbitrary<{ frames: WsFrame[]; violation: boolean }> {
  const request = binaryBody(streamSteps.input, world).filter(
    (b) => b.length <= world.readMaxBytes,
  );
  const ok = (frames: WsFrame[]) => ({ frames, violation: false });
  const bad = (frames: WsFrame[]) => ({ frames, violation: true });
  return weighted(
    [8, fc.tuple(request, mask).map(([p, m]) => ok([frame(0x2, p, m)]))],
    [2, fc.tuple(fc.string({ maxLength: 40 }), mask).map(([s, m]) => ok([frame(0x1, utf8(s), m)]))],
    [1, fc.tuple(fc.uint8Array({ maxLength: 20 }), mask).map(([p, m]) => ok([frame(0x9, p, m)]))],
    [
      1,
      fc.tuple(request, fc.integer({ min: 2, max: 3 }), mask).map(([p, n, m]) => {
        const size = Math.ceil(p.length / n) || 1;
        const parts: WsFrame[] = [];
        for (let i = 0; i * size < Math.max(p.length, 1); i++) {
          const last = (i + 1) * size >= p.length;
          parts.push(frame(i === 0 ? 0x2 : 0x0, p.subarray(i * size, (i + 1) * size), m, last));
        }
        return ok(parts);
      }),
    ],
    [
      1,
      fc
        .tuple(
          fc.constantFrom(
            "oversize",
            "opcode",
            "rsv",
            "unmasked",
            "big-ping",
            "continuation",
            "fragmented-ping",
            "bad-utf8",
          ),
          fc.integer({ min: world.readMaxBytes + 1, max: world.readMaxBytes * 2 }),
          fc.constantFrom(0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf),
          fc.integer({ min: 1, max: 7 }),
          mask,
        )
        .map(([kind, size, opcode, rsv, m]) => {
          const small = Uint8Array.from([0x0a, 0x01, 0x78]);
          switch (kind) {
            case "oversize":
              return bad([frame(0x2, new Uint8Array(size), m)]);
            case "opcode":
              return bad([frame(opcode, small, m)]);
            case "rsv":
              return bad([frame(0x2, small, m, true, rsv)]);
            case "unmasked":
              return bad([{ fin: true, rsv: 0, opcode: 0x2, payload: small, mask: undefined }]);
            case "big-ping":
              return bad([frame(0x9, new Uint8Array(126), m)]);
            case "continuation":
              return bad([frame(0x0, small, m)]);
            case "fragmented-ping":
              return bad([frame(0x9, small, m, false)]);
            default:
              return bad([frame(0x1, Uint8Array.from([0xc3, 0x28]), m)]);
          }
        }),
    ],
  );
}

function subprotocols(world: FuzzWorld): fc.Arbitrary<string> {
  const one = weighted<string>(
    [8, fc.constant("hrpc1")],
    [2, fc.constantFrom(...world.sessionTokens)],
    [1, token()],
    [1, fc.constantFrom("hrpc2", "HRPC1", "hrpc")],
  );
  return weighted<string>(
    [8, fc.array(one, { minLength: 1, maxLength: 3 }).map((ps) => ps.join(", "))],
    [
      2,
      fc.constantFrom(
        "",
        ",",
        "hrpc1,",
        ",hrpc1",
        "hrpc1 hrpc1",
        "hrpc1, hrpc1",
        "hrpc1;x",
        "hrpc1,,x",
        " hrpc1 ",
      ),
    ],
  );
}

const validKey = fc
  .uint8Array({ minLength: 16, maxLength: 16 })
  .map((b) => Buffer.from(b).toString("base64"));

/** A Harmony client opening StreamSteps: the handshake, one request, then it listens. */
function wellFormedWs(world: FuzzWorld): fc.Arbitrary<FuzzCase> {
  return fc
    .record({
      key: validKey,
      token: fc.option(fc.constantFrom(...world.sessionTokens), { freq: 2 }),
      request: validBinary(streamSteps.input, world),
      mask,
    })
    .map(({ key, token, request, mask: m }) =>
      describedCase({
        kind: "ws",
        request: {
          method: "GET",
          path: methodPath(streamSteps),
          headers: [
            ["connection", "Upgrade"],
            ["upgrade", "websocket"],
            ["sec-websocket-key", key],
            ["sec-websocket-version", "13"],
            ["sec-websocket-protocol", token === null ? "hrpc1" : `hrpc1, ${token}`],
          ],
          frames: [frame(0x2, request, m)],
          ending: "wait",
        },
        violation: false,
      }),
    );
}

/** Handshakes and frames with anything wrong with them. */
function hostileWs(world: FuzzWorld): fc.Arbitrary<FuzzCase> {
  const key = weighted<string>(
    [12, validKey],
    [1, fc.constantFrom("", "short", "AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAAA==")],
    [1, headerText(30)],
  );
  return fc
    .record({
      method: weighted<string>([20, fc.constant("GET")], [1, fc.constantFrom("POST", "PUT")]),
      path: weighted<string>(
        [10, fc.constant(methodPath(streamSteps))],
        [2, fc.constantFrom(...methods).map(methodPath)],
        [1, unknownPath],
      ),
      connection: weighted<string>(
        [12, fc.constant("Upgrade")],
        [1, fc.constantFrom("upgrade", "keep-alive, Upgrade", "keep-alive", "close")],
      ),
      upgrade: fc.option(
        weighted<string>(
          [12, fc.constant("websocket")],
          [1, fc.constantFrom("WebSocket", "websocket2", "h2c", "")],
          [1, token()],
        ),
        { freq: 15 },
      ),
      key: fc.option(key, { freq: 15 }),
      version: fc.option(
        weighted<string>([12, fc.constant("13")], [1, fc.constantFrom("8", "12", "14", "x", "")]),
        { freq: 15 },
      ),
      protocols: fc.option(subprotocols(world), { freq: 10 }),
      headers: commonHeaders(world, "1.1"),
      messages: weighted(
        [9, fc.array(wsMessage(world), { minLength: 1, maxLength: 3 })],
        [1, fc.constant<{ frames: WsFrame[]; violation: boolean }[]>([])],
      ),
      ending: weighted<"close" | "wait">(
        [8, fc.constant("wait" as const)],
        [2, fc.constant("close" as const)],
      ),
    })
    .map((c): FuzzCase => {
      const headers: Header[] = [["connection", c.connection]];
      if (c.upgrade !== null) headers.push(["upgrade", c.upgrade]);
      if (c.key !== null) headers.push(["sec-websocket-key", c.key]);
      if (c.version !== null) headers.push(["sec-websocket-version", c.version]);
      if (c.protocols !== null) headers.push(["sec-websocket-protocol", c.protocols]);
      for (const h of c.headers) if (!headers.some(([n]) => n === h[0])) headers.push(h);
      return describedCase({
        kind: "ws",
        request: {
          method: c.method,
          path: c.path,
          headers,
          frames: c.messages.flatMap((m) => m.frames),
          ending: c.ending,
        },
        violation: c.messages.some((m) => m.violation),
      });
    });
}

/**
 * Requests of one protocol, for every method and for paths that are none:
 * two in five well-formed (so the domain behind the boundary is fuzzed
 * too), the rest hostile.
 */
export function requestFor(protocol: FuzzProtocol, world: FuzzWorld): fc.Arbitrary<FuzzCase> {
  return protocol === "hrpc-ws"
    ? weighted<FuzzCase>([2, wellFormedWs(world)], [3, hostileWs(world)])
    : weighted<FuzzCase>([2, wellFormedHttp(protocol, world)], [3, hostileHttp(protocol, world)]);
}

// ---------------------------------------------------------------- reports

const hex = (b: Uint8Array, max = 96) =>
  `${Buffer.from(b.subarray(0, max)).toString("hex")}${b.length > max ? `… (${b.length} bytes)` : ""}`;
const shortValue = (v: string) =>
  v.length > 80 ? `${JSON.stringify(v.slice(0, 60))}… (${v.length} chars)` : JSON.stringify(v);

/** A case as a failure report prints it: the request line, headers, and body in hex. */
export function describeCase(c: FuzzCase): string {
  const headers = c.request.headers.map(([n, v]) => `${n}: ${shortValue(v)}`).join("; ");
  if (c.kind === "http") {
    const r = c.request;
    return `HTTP/${r.http} ${r.method} ${r.path} [${headers}] body(${r.writes} writes)=${hex(r.body)}`;
  }
  const frames = c.request.frames
    .map(
      (f) =>
        `op${f.opcode}${f.fin ? "" : "…"}${f.rsv ? ` rsv${f.rsv}` : ""}${f.mask ? "" : " unmasked"}=${hex(f.payload, 48)}`,
    )
    .join(", ");
  return `WebSocket ${c.request.method} ${c.request.path} [${headers}] frames=[${frames}] then ${c.request.ending}`;
}

function describedCase(c: FuzzCase): FuzzCase {
  return Object.assign(c, { [fc.toStringMethod]: () => describeCase(c) });
}
