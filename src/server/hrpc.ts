import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { Duplex } from "node:stream";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  createAsyncIterable,
  encodeEnvelope,
  pipe,
  readAllBytes,
  transformSplitEnvelope,
  type UniversalHandler,
  type UniversalServerRequest,
} from "@connectrpc/connect/protocol";
import {
  endStreamFlag,
  endStreamFromJson,
  errorFromJsonBytes,
} from "@connectrpc/connect/protocol-connect";
import type { Logger } from "pino";
import { type WebSocket, WebSocketServer } from "ws";
import { badRequestIdentifier, identifierForCode, isUndecodableRequest } from "../errors.js";
import { ErrorSchema, RetryInfoSchema } from "../gen/hrpc/v1/hrpc_pb.js";
import { harmonyIdentifier } from "./interceptors.js";

/**
 * hRPC v1 (PROTOCOL.md §7) as a thin adapter over the Connect handlers: an
 * hRPC unary call is handed to the same handler a Connect binary call would
 * reach (the bodies are the same bytes), and a WebSocket stream to the same
 * handler a Connect server-stream would. So every hRPC call runs through the
 * same interceptors, handlers and error table; nothing is implemented twice.
 */

export const HRPC_CONTENT_TYPE = "application/hrpc";
const SUBPROTOCOL = "hrpc1";
/** A WebSocket that has not sent its request by then is closed. */
const FIRST_MESSAGE_TIMEOUT_MS = 10_000;
/** Open streams are pinged this often; one that misses a pong is dropped. */
const PING_INTERVAL_MS = 30_000;

const hrpcHeaders = { "content-type": HRPC_CONTENT_TYPE, "hrpc-version": "1" } as const;

/** The HTTP status hRPC uses for an error identifier. */
export function hrpcStatus(identifier: string): number {
  switch (identifier) {
    case "hrpc.internal-server-error":
      return 500;
    case "hrpc.resource-exhausted":
      return 429;
    case "hrpc.not-found":
      return 404;
    case "hrpc.not-implemented":
      return 501;
    case "hrpc.unavailable":
      return 503;
    // scherzo answers its two federation-policy errors with 403.
    case "h.federation-disabled":
    case "h.host-not-allowed":
      return 403;
    default:
      return identifier.startsWith("hrpc.") && !identifier.startsWith("hrpc.http.") ? 500 : 400;
  }
}

interface HrpcError {
  readonly identifier: string;
  readonly humanMessage: string;
  readonly details: Uint8Array;
}

const badUnary = (humanMessage: string): HrpcError => ({
  identifier: badRequestIdentifier(false),
  humanMessage,
  details: new Uint8Array(),
});
const badStreaming = (humanMessage: string): HrpcError => ({
  identifier: badRequestIdentifier(true),
  humanMessage,
  details: new Uint8Array(),
});

/** A ConnectError as hRPC reports it, keeping the Harmony identifier cadenza attached. */
function fromConnectError(err: ConnectError, streaming: boolean): HrpcError {
  const detail = err.findDetails(ErrorSchema)[0];
  const malformed = err.code === Code.InvalidArgument || isUndecodableRequest(err);
  const identifier =
    harmonyIdentifier(err) ??
    (malformed ? badRequestIdentifier(streaming) : identifierForCode(err.code));
  return {
    identifier,
    humanMessage: detail?.humanMessage || err.rawMessage,
    details: detail?.details ?? new Uint8Array(),
  };
}

/** The seconds to wait, from a resource-exhausted error's RetryInfo. */
function retryAfterOf(error: HrpcError): number | undefined {
  if (error.identifier !== "hrpc.resource-exhausted" || error.details.length === 0)
    return undefined;
  try {
    return fromBinary(RetryInfoSchema, error.details).retryAfter || undefined;
  } catch {
    return undefined;
  }
}

function encodeError(error: HrpcError): Uint8Array {
  return toBinary(ErrorSchema, create(ErrorSchema, error));
}

type NodeRequest = IncomingMessage | Http2ServerRequest;
type NodeResponse = ServerResponse | Http2ServerResponse;

export interface HrpcAdapter {
  /** Whether a request is for hRPC's unary transport (its content type, or none that Connect knows). */
  claims(req: NodeRequest): boolean;
  /** Serves an hRPC unary call. */
  serveUnary(req: NodeRequest, res: NodeResponse): Promise<void>;
  /** Serves an hRPC stream: a WebSocket upgrade on a method's path. */
  serveUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Ends streams still waiting for their request; open streams end through Connect's shutdown signal. */
  close(): void;
}

export type HrpcAdapterDeps = {
  readonly handlers: readonly UniversalHandler[];
  readonly logger: Logger;
  readonly readMaxBytes: number;
  /** How long a WebSocket may take to send its request (default 10 s). */
  readonly firstMessageTimeoutMs?: number;
};

// Content types the Connect router serves; a POST to a method path with any
// other content type is a malformed hRPC call.
const connectContentType =
  /^application\/(?:(?:connect\+)?(?:proto|json)|grpc(?:-web(?:-text)?)?(?:\+(?:proto|json))?)(?:;|$)/i;

export function createHrpcAdapter({
  handlers,
  logger,
  readMaxBytes,
  firstMessageTimeoutMs = FIRST_MESSAGE_TIMEOUT_MS,
}: HrpcAdapterDeps): HrpcAdapter {
  const byPath = new Map(handlers.map((h) => [h.requestPath, h]));
  const waiting = new Set<WebSocket>();
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: readMaxBytes,
    perMessageDeflate: false,
    handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  });

  const pathOf = (url: string | undefined): string => {
    const raw = url ?? "/";
    const q = raw.indexOf("?");
    return q === -1 ? raw : raw.slice(0, q);
  };

  const sendError = (res: NodeResponse, error: HrpcError): void => {
    const body = encodeError(error);
    const headers: Record<string, string | number> = {
      ...hrpcHeaders,
      "content-length": body.length,
    };
    const retryAfter = retryAfterOf(error);
    if (retryAfter !== undefined) headers["retry-after"] = retryAfter;
    res.writeHead(hrpcStatus(error.identifier), headers);
    res.end(body);
  };

  const universalRequest = (
    req: NodeRequest,
    contentType: string,
    body: AsyncIterable<Uint8Array>,
    signal: AbortSignal,
    authorization: string | undefined,
  ): UniversalServerRequest => {
    const header = new Headers({ "content-type": contentType, "connect-protocol-version": "1" });
    if (authorization) header.set("authorization", authorization);
    return {
      httpVersion: req.httpVersion,
      url: `http://cadenza${req.url ?? "/"}`,
      method: "POST",
      header,
      body,
      signal,
    };
  };

  const serveUnaryUnguarded = async (req: NodeRequest, res: NodeResponse): Promise<void> => {
    const handler = byPath.get(pathOf(req.url));
    if (!(req.headers["content-type"] ?? "").toLowerCase().startsWith(HRPC_CONTENT_TYPE)) {
      return sendError(res, badUnary(`hRPC calls have Content-Type: ${HRPC_CONTENT_TYPE}`));
    }
    if (req.method !== "POST") return sendError(res, badUnary("hRPC unary calls are POSTs"));
    if (!handler) {
      return sendError(res, {
        identifier: "hrpc.not-found",
        humanMessage: `no method at ${pathOf(req.url)}`,
        details: new Uint8Array(),
      });
    }
    if (handler.method.methodKind !== "unary") {
      return sendError(
        res,
        badUnary(`${handler.method.name} streams: open a WebSocket on this path instead`),
      );
    }
    const abort = new AbortController();
    res.once("close", () => abort.abort());
    const uRes = await handler(
      universalRequest(
        req,
        "application/proto",
        req as AsyncIterable<Uint8Array>,
        abort.signal,
        req.headers.authorization,
      ),
    );
    const body = uRes.body
      ? await readAllBytes(uRes.body, Number.MAX_SAFE_INTEGER)
      : new Uint8Array();
    if (uRes.status === 200) {
      res.writeHead(200, { ...hrpcHeaders, "content-length": body.length });
      res.end(body);
      return;
    }
    const fallback = new ConnectError(`HTTP ${uRes.status}`, Code.Internal);
    const error = fromConnectError(errorFromJsonBytes(body, undefined, fallback), false);
    sendError(res, error);
  };

  return {
    claims(req) {
      const contentType = req.headers["content-type"] ?? "";
      if (contentType.toLowerCase().startsWith(HRPC_CONTENT_TYPE)) return true;
      // A POST to a method path that Connect would refuse as an unknown media type.
      return (
        req.method === "POST" &&
        byPath.has(pathOf(req.url)) &&
        !connectContentType.test(contentType)
      );
    },

    async serveUnary(req, res) {
      try {
        await serveUnaryUnguarded(req, res);
      } catch (err) {
        logger.error({ err }, "hRPC unary call failed");
        if (res.headersSent) res.end();
        else {
          sendError(res, {
            identifier: "hrpc.internal-server-error",
            humanMessage: "the server failed to handle this request; it has been logged",
            details: new Uint8Array(),
          });
        }
      }
    },

    serveUpgrade(req, socket, head) {
      const refuse = (error: HrpcError): void => {
        const body = Buffer.from(encodeError(error));
        socket.end(
          Buffer.concat([
            Buffer.from(
              `HTTP/1.1 ${hrpcStatus(error.identifier)} hRPC error\r\n` +
                `Content-Type: ${HRPC_CONTENT_TYPE}\r\nhrpc-version: 1\r\n` +
                `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
            ),
            body,
          ]),
        );
      };
      const handler = byPath.get(pathOf(req.url));
      if (!handler) {
        return refuse({
          identifier: "hrpc.not-found",
          humanMessage: `no method at ${pathOf(req.url)}`,
          details: new Uint8Array(),
        });
      }
      if (handler.method.methodKind !== "server_streaming") {
        return refuse(badStreaming(`${handler.method.name} is unary: POST it instead`));
      }
      const offered = (req.headers["sec-websocket-protocol"] ?? "")
        .split(",")
        .map((p) => p.trim())
        .filter((p) => p !== "");
      if (!offered.includes(SUBPROTOCOL)) {
        return refuse(badStreaming(`offer the WebSocket subprotocol ${SUBPROTOCOL}`));
      }
      if (!req.headers["sec-websocket-key"] || req.headers["sec-websocket-version"] !== "13") {
        return refuse(badStreaming("not a WebSocket handshake (RFC 6455, version 13)"));
      }
      const authorization = req.headers.authorization ?? tokenFromSubprotocols(offered);
      wss.handleUpgrade(req, socket, head, (ws) => {
        stream(ws, req, handler, authorization).catch((err: unknown) => {
          logger.error({ err }, "hRPC stream failed");
          ws.terminate();
        });
      });
    },

    close() {
      for (const ws of waiting) {
        sendFrame(
          ws,
          1,
          encodeError({
            identifier: "hrpc.unavailable",
            humanMessage: "the server is shutting down; reconnect and try again",
            details: new Uint8Array(),
          }),
        );
        ws.close(1001);
      }
      waiting.clear();
    },
  };

  async function stream(
    ws: WebSocket,
    req: IncomingMessage,
    handler: UniversalHandler,
    authorization: string | undefined,
  ): Promise<void> {
    const abort = new AbortController();
    let alive = true;
    const pinger = setInterval(() => {
      if (!alive) return ws.terminate();
      alive = false;
      ws.ping();
    }, PING_INTERVAL_MS);
    ws.on("pong", () => {
      alive = true;
    });
    ws.once("close", () => {
      clearInterval(pinger);
      waiting.delete(ws);
      abort.abort();
    });
    ws.on("error", (err) => logger.debug({ err }, "hRPC WebSocket error"));

    waiting.add(ws);
    const request = await new Promise<Uint8Array | HrpcError>((resolve) => {
      const timer = setTimeout(
        () => resolve(badStreaming(`no request arrived within ${firstMessageTimeoutMs} ms`)),
        firstMessageTimeoutMs,
      );
      ws.once("message", (data, isBinary) => {
        clearTimeout(timer);
        const bytes = Buffer.isBuffer(data)
          ? data
          : Array.isArray(data)
            ? Buffer.concat(data)
            : Buffer.from(data);
        resolve(isBinary ? bytes : badStreaming("send the request as one binary message"));
      });
      ws.once("close", () => {
        clearTimeout(timer);
        resolve(badStreaming("closed before the request"));
      });
    });
    if (!waiting.delete(ws)) return; // closed (or shut down) while waiting
    if (!(request instanceof Uint8Array)) {
      sendFrame(ws, 1, encodeError(request));
      ws.close(1008);
      return;
    }

    const uRes = await handler(
      universalRequest(
        req,
        "application/connect+proto",
        createAsyncIterable([encodeEnvelope(0, request)]),
        abort.signal,
        authorization,
      ),
    );
    if (uRes.status !== 200 || !uRes.body) {
      const body = uRes.body
        ? await readAllBytes(uRes.body, Number.MAX_SAFE_INTEGER)
        : new Uint8Array();
      const fallback = new ConnectError(`HTTP ${uRes.status}`, Code.Internal);
      sendFrame(
        ws,
        1,
        encodeError(fromConnectError(errorFromJsonBytes(body, undefined, fallback), true)),
      );
      ws.close(1000);
      return;
    }
    for await (const envelope of pipe(uRes.body, transformSplitEnvelope(Number.MAX_SAFE_INTEGER))) {
      if ((envelope.flags & endStreamFlag) === endStreamFlag) {
        const end = endStreamFromJson(envelope.data);
        if (end.error) sendFrame(ws, 1, encodeError(fromConnectError(end.error, true)));
        break;
      }
      sendFrame(ws, 0, envelope.data);
    }
    ws.close(1000);
  }
}

/**
 * The session token a browser put in `Sec-WebSocket-Protocol` (it cannot set
 * headers on WebSockets): the last subprotocol offered after `hrpc1`.
 */
export function tokenFromSubprotocols(offered: readonly string[]): string | undefined {
  const last = offered.at(-1);
  return offered.length > 1 && last !== SUBPROTOCOL ? last : undefined;
}

/** One hRPC stream message: an opcode byte (0 message, 1 error), then the payload. */
function sendFrame(ws: WebSocket, opcode: 0 | 1, payload: Uint8Array): void {
  if (ws.readyState !== ws.OPEN) return;
  const frame = new Uint8Array(payload.length + 1);
  frame[0] = opcode;
  frame.set(payload, 1);
  ws.send(frame, { binary: true });
}
