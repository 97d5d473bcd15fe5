import { Agent, request as httpRequest, type IncomingMessage } from "node:http";
import { type ClientHttp2Session, constants, connect as http2Connect } from "node:http2";
import type { Socket } from "node:net";
import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { endStreamFromJson, errorFromJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { trailerParse } from "@connectrpc/connect/protocol-grpc-web";
import { ErrorSchema } from "../../src/gen/hrpc/v1/hrpc_pb.js";

/**
 * Raw requests, written exactly as given (HTTP/1.1, HTTP/2 or a WebSocket
 * spoken byte by byte), and a reader that tells from the answer alone which
 * protocol answered and with what code and Harmony identifier. For tests that
 * send what no well-behaved client would.
 */

export type Header = readonly [name: string, value: string];

export interface RawRequest {
  readonly http: "1.1" | "2";
  readonly method: string;
  readonly path: string;
  readonly headers: readonly Header[];
  readonly body: Uint8Array;
  /** Into how many writes the body goes (over HTTP/1.1, more than one is chunked). */
  readonly writes: number;
}

/** What an answer said, read from its own Content-Type and framing. */
export interface Answer {
  readonly status: number;
  /** `success`: a message (or a clean end); `error`: a protocol's error; `plain`: neither. */
  readonly kind: "success" | "error" | "plain";
  readonly protocol: "connect" | "connect-stream" | "grpc" | "grpc-web" | "hrpc" | "other";
  readonly code: Code | undefined;
  readonly identifier: string | undefined;
  /** A line for failure reports. */
  readonly summary: string;
}

/** The code names a Connect error's JSON carries (Code.InvalidArgument is `invalid_argument`). */
const connectCodes = new Set(
  Object.values(Code)
    .filter((c): c is string => typeof c === "string")
    .map((c) => c.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase()),
);

const enveloped = (contentType: string) => /^application\/(connect\+|grpc)/i.test(contentType);

/** The complete frames of an enveloped body (5-byte header: flags, big-endian length). */
export function splitFrames(bytes: Uint8Array): { flags: number; data: Uint8Array }[] {
  const out: { flags: number; data: Uint8Array }[] = [];
  let offset = 0;
  while (offset + 5 <= bytes.length) {
    const length = new DataView(bytes.buffer, bytes.byteOffset + offset + 1, 4).getUint32(0);
    if (offset + 5 + length > bytes.length) break;
    out.push({
      flags: bytes[offset] ?? 0,
      data: bytes.subarray(offset + 5, offset + 5 + length),
    });
    offset += 5 + length;
  }
  return out;
}

/** Whether an enveloped body so far holds a complete message frame: a stream that answers. */
function hasMessageFrame(contentType: string, bytes: Uint8Array): boolean {
  return enveloped(contentType) && splitFrames(bytes).some((f) => f.flags === 0);
}

const describeError = (code: Code | undefined, identifier: string | undefined) =>
  `${code === undefined ? "?" : Code[code]} ${identifier ?? "(no identifier)"}`;

/** Reads an answer from its status, headers, trailers and (possibly partial) body. */
export function interpret(
  status: number,
  header: Headers,
  trailer: Headers,
  body: Uint8Array,
): Answer {
  const contentType = header.get("content-type") ?? "";
  const lower = contentType.toLowerCase();
  const head = `HTTP ${status} ${contentType || "(no content-type)"}`;
  const plain = (why: string): Answer => ({
    status,
    kind: "plain",
    protocol: "other",
    code: undefined,
    identifier: undefined,
    summary: `${head}: ${why}: ${new TextDecoder().decode(body.subarray(0, 200))}`,
  });
  const error = (
    protocol: Answer["protocol"],
    code: Code | undefined,
    identifier: string | undefined,
  ): Answer => ({
    status,
    kind: "error",
    protocol,
    code,
    identifier,
    summary: `${head}: ${describeError(code, identifier)}`,
  });
  const success = (protocol: Answer["protocol"]): Answer => ({
    status,
    kind: "success",
    protocol,
    code: undefined,
    identifier: undefined,
    summary: `${head}: success`,
  });

  if (lower.startsWith("application/hrpc")) {
    if (status === 200) return success("hrpc");
    try {
      const e = fromBinary(ErrorSchema, body);
      return error("hrpc", undefined, e.identifier || undefined);
    } catch {
      return plain("an hRPC error body that does not decode");
    }
  }
  if (lower.startsWith("application/grpc")) {
    const web = lower.startsWith("application/grpc-web");
    const protocol = web ? "grpc-web" : "grpc";
    const frames = splitFrames(body);
    let status_ = new Headers(trailer);
    for (const [k, v] of header) if (!status_.has(k)) status_.set(k, v);
    if (web && !header.has("grpc-status")) {
      const last = frames.find((f) => f.flags & 0x80);
      if (last) status_ = trailerParse(last.data);
    }
    if (!status_.has("grpc-status")) {
      return frames.some((f) => f.flags === 0)
        ? success(protocol)
        : plain("a gRPC answer without grpc-status");
    }
    const e = findTrailerError(status_);
    if (!e) return success(protocol);
    return error(protocol, e.code, e.findDetails(ErrorSchema)[0]?.identifier);
  }
  if (lower.startsWith("application/connect+")) {
    const frames = splitFrames(body);
    const end = frames.find((f) => f.flags & 0x02);
    if (!end) {
      return frames.some((f) => f.flags === 0)
        ? success("connect-stream")
        : plain("a Connect stream with neither a message nor an end-of-stream frame");
    }
    try {
      const e = endStreamFromJson(end.data).error;
      if (!e) return success("connect-stream");
      return error("connect-stream", e.code, e.findDetails(ErrorSchema)[0]?.identifier);
    } catch {
      return plain("an end-of-stream frame that does not parse");
    }
  }
  if (/^application\/(json|proto)/.test(lower)) {
    if (status === 200) return success("connect");
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(body));
    } catch {
      return plain("an error body that is not JSON");
    }
    const code = (json as { code?: unknown } | null)?.code;
    if (typeof code !== "string" || !connectCodes.has(code)) {
      return plain("a JSON body that is not a Connect error");
    }
    const e = errorFromJsonBytes(body, undefined, new Error("not a Connect error") as never);
    return error("connect", e.code, e.findDetails(ErrorSchema)[0]?.identifier);
  }
  return plain("not a protocol's answer");
}

const h1Agent = new Agent({ keepAlive: true, maxSockets: 8 });
let h2Session: ClientHttp2Session | undefined;

function session(baseUrl: string): ClientHttp2Session {
  if (!h2Session || h2Session.closed || h2Session.destroyed) {
    const s = http2Connect(baseUrl);
    s.on("error", () => {});
    s.unref();
    h2Session = s;
  }
  return h2Session;
}

/** Closes the pooled connections (call in afterAll, or the run hangs). */
export function closeWire(): void {
  h1Agent.destroy();
  h2Session?.destroy();
  h2Session = undefined;
}

function pieces(body: Uint8Array, writes: number): Uint8Array[] {
  if (writes <= 1 || body.length < 2) return [body];
  const size = Math.ceil(body.length / writes);
  const out: Uint8Array[] = [];
  for (let i = 0; i < body.length; i += size) out.push(body.subarray(i, i + size));
  return out;
}

/**
 * Sends a raw request and reads its answer. A stream that has sent a message
 * is answered: reading stops there. Rejects when no answer came within
 * `timeoutMs` or the server dropped the request without one.
 */
export async function sendRaw(
  baseUrl: string,
  req: RawRequest,
  timeoutMs: number,
): Promise<Answer> {
  if (req.http !== "2") return sendHttp1(baseUrl, req, timeoutMs);
  // A stream refused (REFUSED_STREAM) was not processed and may be sent again
  // (RFC 9113 §8.7), on a fresh connection: what grpc-js and browsers do when
  // a GOAWAY crossed a request that was already on its way.
  for (let attempt = 1; ; attempt++) {
    try {
      return await sendHttp2(baseUrl, req, timeoutMs);
    } catch (err) {
      if (!(err instanceof RefusedStream) || attempt === 3) throw err;
    }
  }
}

class RefusedStream extends Error {}

function sendHttp1(baseUrl: string, req: RawRequest, timeoutMs: number): Promise<Answer> {
  const url = new URL(baseUrl);
  return new Promise<Answer>((resolve, reject) => {
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of req.headers) headers[name] = value;
    const parts = pieces(req.body, req.writes);
    const bodyless = req.method === "GET" || req.method === "HEAD";
    // Framed explicitly: Node sends a DELETE's body with neither header, and
    // the server would rightly read it as the next request.
    if (!bodyless) {
      if (parts.length === 1) headers["content-length"] = String(req.body.length);
      else headers["transfer-encoding"] = "chunked";
    }
    const r = httpRequest({
      agent: h1Agent,
      host: url.hostname,
      port: url.port,
      method: req.method,
      path: req.path,
      headers,
    });
    const timer = setTimeout(() => {
      r.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (answer: Answer) => {
      clearTimeout(timer);
      resolve(answer);
    };
    r.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`the request failed before an answer: ${err.message}`));
    });
    r.on("response", (res: IncomingMessage) => {
      const header = new Headers();
      for (const [k, v] of Object.entries(res.headers)) {
        if (v !== undefined) header.set(k, Array.isArray(v) ? v.join(", ") : v);
      }
      const contentType = header.get("content-type") ?? "";
      const chunks: Buffer[] = [];
      const status = res.statusCode ?? 0;
      res.on("data", (chunk: Buffer) => {
        chunks.push(chunk);
        const body = Buffer.concat(chunks);
        if (hasMessageFrame(contentType, body)) {
          done(interpret(status, header, new Headers(), body));
          r.destroy();
        }
      });
      res.on("end", () => {
        const trailer = new Headers();
        for (const [k, v] of Object.entries(res.trailers)) if (v !== undefined) trailer.set(k, v);
        done(interpret(status, header, trailer, Buffer.concat(chunks)));
      });
      res.on("error", () => {
        // Destroyed by us after a message arrived, or reset after the head.
        done(interpret(status, header, new Headers(), Buffer.concat(chunks)));
      });
    });
    for (const part of parts.slice(0, -1)) r.write(part);
    if (bodyless) r.end();
    else r.end(parts.at(-1));
  });
}

function sendHttp2(baseUrl: string, req: RawRequest, timeoutMs: number): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const headers: Record<string, string> = { ":method": req.method, ":path": req.path };
    // HTTP/2 forbids a value that starts or ends with whitespace (RFC 9113
    // §8.2.1) and Node drops such a field; HTTP/1.1's parser trims it.
    for (const [name, value] of req.headers) headers[name] = value.replace(/^[ \t]+|[ \t]+$/g, "");
    const bodyless = req.method === "GET" || req.method === "HEAD";
    let stream: ReturnType<ClientHttp2Session["request"]>;
    try {
      // Explicit: Node would end a DELETE's stream with its headers.
      stream = session(baseUrl).request(headers, { endStream: bodyless });
    } catch (err) {
      reject(new Error(`the client refused to send it: ${(err as Error).message}`));
      return;
    }
    const timer = setTimeout(() => {
      stream.close();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    let status = 0;
    const header = new Headers();
    const trailer = new Headers();
    const chunks: Buffer[] = [];
    let settled = false;
    const done = (answer: Answer) => {
      settled = true;
      clearTimeout(timer);
      resolve(answer);
    };
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      for (const [k, v] of Object.entries(h)) {
        if (!k.startsWith(":") && v !== undefined) header.set(k, String(v));
      }
    });
    stream.on("trailers", (t) => {
      for (const [k, v] of Object.entries(t)) if (v !== undefined) trailer.set(k, String(v));
    });
    stream.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      const body = Buffer.concat(chunks);
      if (!settled && hasMessageFrame(header.get("content-type") ?? "", body)) {
        done(interpret(status, header, trailer, body));
        stream.close();
      }
    });
    stream.on("end", () => {
      if (!settled) done(interpret(status, header, trailer, Buffer.concat(chunks)));
    });
    stream.on("close", () => {
      if (settled) return;
      clearTimeout(timer);
      if (status !== 0) {
        const a = interpret(status, header, trailer, Buffer.concat(chunks));
        done({
          ...a,
          summary: `${a.summary} (the stream closed before its end, RST code ${stream.rstCode})`,
        });
      } else if (stream.rstCode === constants.NGHTTP2_REFUSED_STREAM) {
        reject(new RefusedStream("the stream was refused (REFUSED_STREAM) three times"));
      } else reject(new Error(`the stream closed without an answer (RST code ${stream.rstCode})`));
    });
    stream.on("error", () => {});
    const parts = pieces(req.body, req.writes);
    if (!bodyless) {
      for (const part of parts.slice(0, -1)) stream.write(part);
      stream.end(parts.at(-1));
    }
  });
}

/** One WebSocket frame a client sends; `violation` marks frames RFC 6455 forbids. */
export interface WsFrame {
  readonly fin: boolean;
  readonly rsv: number;
  readonly opcode: number;
  readonly payload: Uint8Array;
  readonly mask: Uint8Array | undefined;
}

export interface WsRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: readonly Header[];
  readonly frames: readonly WsFrame[];
  /** After the frames: send a close frame, or wait for the server. */
  readonly ending: "close" | "wait";
}

export type WsAnswer =
  | { readonly handshake: "refused"; readonly answer: Answer }
  | {
      readonly handshake: "accepted";
      /** The hRPC frames received: opcode byte 0 (message) or 1 (error, with its identifier). */
      readonly frames: readonly { opcode: number; identifier: string | undefined }[];
      /** Data frames that are not hRPC frames (text, empty binary). */
      readonly stray: number;
      readonly closeCode: number | undefined;
    };

/** A client frame on the wire: masked unless `mask` is undefined. */
export function encodeWsFrame(frame: WsFrame): Buffer {
  const { payload, mask } = frame;
  const len = payload.length;
  const head: number[] = [(frame.fin ? 0x80 : 0) | ((frame.rsv & 7) << 4) | (frame.opcode & 0x0f)];
  const maskBit = mask ? 0x80 : 0;
  if (len < 126) head.push(maskBit | len);
  else if (len < 65536) head.push(maskBit | 126, len >> 8, len & 0xff);
  else {
    head.push(maskBit | 127, 0, 0, 0, 0);
    head.push((len >>> 24) & 0xff, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff);
  }
  const body = Buffer.from(payload);
  if (mask) {
    for (let i = 0; i < body.length; i++) body[i] = (body[i] ?? 0) ^ (mask[i % 4] ?? 0);
    return Buffer.concat([Buffer.from(head), Buffer.from(mask), body]);
  }
  return Buffer.concat([Buffer.from(head), body]);
}

/** Server frames (never masked) complete in `buf`, and how many bytes they took. */
function decodeWsFrames(buf: Buffer): {
  frames: { opcode: number; fin: boolean; payload: Buffer }[];
  used: number;
} {
  const frames: { opcode: number; fin: boolean; payload: Buffer }[] = [];
  let offset = 0;
  for (;;) {
    if (buf.length - offset < 2) break;
    const b0 = buf[offset] ?? 0;
    const b1 = buf[offset + 1] ?? 0;
    let len = b1 & 0x7f;
    let at = offset + 2;
    if (len === 126) {
      if (buf.length - at < 2) break;
      len = buf.readUInt16BE(at);
      at += 2;
    } else if (len === 127) {
      if (buf.length - at < 8) break;
      len = Number(buf.readBigUInt64BE(at));
      at += 8;
    }
    if (buf.length - at < len) break;
    frames.push({ opcode: b0 & 0x0f, fin: (b0 & 0x80) !== 0, payload: buf.subarray(at, at + len) });
    offset = at + len;
  }
  return { frames, used: offset };
}

/**
 * Opens a WebSocket by hand: the handshake with exactly the given headers,
 * then the given frames, then reads the server's frames until it closes, sends
 * an hRPC message frame (the stream answers), or `timeoutMs` passes (rejects).
 */
export function sendWs(baseUrl: string, req: WsRequest, timeoutMs: number): Promise<WsAnswer> {
  const url = new URL(baseUrl);
  return new Promise<WsAnswer>((resolve, reject) => {
    const headers: Record<string, string> = {};
    for (const [name, value] of req.headers) headers[name] = value;
    const r = httpRequest({
      agent: false,
      host: url.hostname,
      port: url.port,
      method: req.method,
      path: req.path,
      headers,
    });
    let socket: Socket | undefined;
    const timer = setTimeout(() => {
      r.destroy();
      socket?.destroy();
      reject(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const finish = (answer: WsAnswer) => {
      clearTimeout(timer);
      resolve(answer);
    };
    r.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`the handshake failed before an answer: ${err.message}`));
    });
    r.on("response", (res: IncomingMessage) => {
      const header = new Headers();
      for (const [k, v] of Object.entries(res.headers)) {
        if (v !== undefined) header.set(k, Array.isArray(v) ? v.join(", ") : v);
      }
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      const end = () =>
        finish({
          handshake: "refused",
          answer: interpret(res.statusCode ?? 0, header, new Headers(), Buffer.concat(chunks)),
        });
      res.on("end", end);
      res.on("error", end);
    });
    r.on("upgrade", (_res: IncomingMessage, s: Socket, head: Buffer) => {
      socket = s;
      const frames: { opcode: number; identifier: string | undefined }[] = [];
      let stray = 0;
      let closeCode: number | undefined;
      let pending = Buffer.from(head);
      let message: Buffer[] = [];
      let messageOpcode = 0;
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        finish({ handshake: "accepted", frames, stray, closeCode });
        s.destroy();
      };
      const onData = (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        const { frames: got, used } = decodeWsFrames(pending);
        pending = pending.subarray(used);
        for (const f of got) {
          if (f.opcode === 0x8) {
            closeCode = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : undefined;
            return settle();
          }
          if (f.opcode >= 0x8) continue; // ping, pong
          if (f.opcode !== 0) messageOpcode = f.opcode;
          message.push(f.payload);
          if (!f.fin) continue;
          const data = Buffer.concat(message);
          message = [];
          const first = data[0];
          if (messageOpcode !== 0x2 || (first !== 0 && first !== 1)) {
            stray++;
            continue;
          }
          let identifier: string | undefined;
          if (first === 1) {
            try {
              identifier = fromBinary(ErrorSchema, data.subarray(1)).identifier || undefined;
            } catch {
              identifier = undefined;
            }
          }
          frames.push({ opcode: first, identifier });
          if (first === 0) return settle(); // the stream answers
        }
      };
      s.on("data", onData);
      s.on("end", settle);
      s.on("close", settle);
      s.on("error", settle);
      onData(Buffer.alloc(0));
      for (const f of req.frames) s.write(encodeWsFrame(f));
      if (req.ending === "close") {
        s.write(
          encodeWsFrame({
            fin: true,
            rsv: 0,
            opcode: 0x8,
            payload: new Uint8Array([0x03, 0xe8]),
            mask: new Uint8Array([1, 2, 3, 4]),
          }),
        );
      }
    });
    r.end();
  });
}
