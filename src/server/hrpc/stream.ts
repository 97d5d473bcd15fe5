import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { DescMethod, Message } from "@bufbuild/protobuf";
import {
  createAsyncIterable,
  encodeEnvelope,
  pipe,
  transformSplitEnvelope,
} from "@connectrpc/connect/protocol";
import { endStreamFlag } from "@connectrpc/connect/protocol-connect";
import type { Logger } from "pino";
import { type RawData, type WebSocket, WebSocketServer } from "ws";
import type { Caller } from "../../caller.js";
import { hrpcErrors } from "../../errors.js";
import type { StreamSlots } from "../../limits/admission.js";
import type { DirectMethod, DirectStreams } from "../rpc/direct-stream.js";
import {
  type CallRecord,
  type Failure,
  failureFor,
  failureOf,
  newCall,
  recordFailure,
} from "../rpc/failure.js";
import type { RpcMethod } from "../rpc/router.js";
import { encodeHrpcError, hrpcErrorHttpBytes } from "./errors.js";
import { createPinger } from "./pinger.js";
import { pathOf, SUBPROTOCOL } from "./routing.js";
import { connectRequestFor } from "./unary.js";

export interface HrpcStreamOptions {
  readonly methods: ReadonlyMap<string, RpcMethod>;
  readonly callerOf: (req: IncomingMessage) => Caller;
  readonly streams: Pick<StreamSlots, "acquire">;
  readonly logger: Logger;
  readonly readMaxBytes: number;
  /** How long a WebSocket may take to send its request. */
  readonly firstMessageTimeoutMs: number;
  /** How often open streams are pinged. */
  readonly pingIntervalMs: number;
  /**
   * Methods whose streams run on the direct path (rpc/direct-stream.ts), by
   * descriptor; a request that does not decode still goes to the method's
   * Connect handler, which refuses it as it always has.
   */
  readonly direct?: {
    readonly methods: ReadonlyMap<DescMethod, DirectMethod>;
    readonly streams: DirectStreams;
  };
}

export interface HrpcStreams {
  /** Serves an hRPC stream: a WebSocket upgrade on a streaming method's path. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Ends streams still waiting for their request; open streams end through the shutdown signal. */
  close(): void;
}

/**
 * hRPC streams: the WebSocket handshake (refused with an hRPC error body when
 * it is not one), the wait for the one request message, then the method's
 * Connect server-stream relayed frame by frame: `0x00` + message, or `0x01` +
 * `hrpc.v1.Error` from the call's recorded Failure.
 */
export function createHrpcStreams(options: HrpcStreamOptions): HrpcStreams {
  const { methods, logger } = options;
  const waiting = new Set<WebSocket>();
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: options.readMaxBytes,
    perMessageDeflate: false,
    handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
  });
  const bad = (message: string) => failureFor(hrpcErrors.badStreamingRequest, message);
  // A handshake ws itself refuses (not a GET, a wrong Upgrade header, a
  // malformed key or subprotocol list) is answered here, as hRPC, rather
  // than with ws's plain-text page; the socket is ours to close.
  wss.on("wsClientError", (error, socket, req) => {
    const path = pathOf(req.url);
    const failure = bad(`not a WebSocket handshake: ${error.message}`);
    socket.end(hrpcErrorHttpBytes(recordFailure(logger, undefined, failure, path.slice(1, 200))));
  });

  function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
    const path = pathOf(req.url);
    const caller = options.callerOf(req);
    const call: CallRecord = newCall("hrpc", caller.address);
    const refuse = (failure: Failure): void => {
      socket.end(hrpcErrorHttpBytes(recordFailure(logger, call, failure, path.slice(1, 200))));
    };
    const method = methods.get(path);
    if (!method) {
      return refuse(failureFor(hrpcErrors.notFound, `no method at ${path.slice(0, 200)}`));
    }
    if (method.method.methodKind !== "server_streaming") {
      return refuse(bad(`${method.method.name} is unary: POST it instead`));
    }
    const offered = (req.headers["sec-websocket-protocol"] ?? "")
      .split(",")
      .map((p) => p.trim())
      .filter((p) => p !== "");
    if (!offered.includes(SUBPROTOCOL)) {
      return refuse(bad(`offer the WebSocket subprotocol ${SUBPROTOCOL}`));
    }
    if (!req.headers["sec-websocket-key"] || req.headers["sec-websocket-version"] !== "13") {
      return refuse(bad("not a WebSocket handshake (RFC 6455, version 13)"));
    }
    const authorization = req.headers.authorization ?? tokenFromSubprotocols(offered);
    // Each open WebSocket holds one of its address's stream slots, from the
    // handshake until it closes (also while it has not sent its request).
    let release: () => void;
    try {
      release = options.streams.acquire(caller.address);
    } catch (err) {
      return refuse(failureOf(err, "handler", true));
    }
    socket.once("close", release);
    wss.handleUpgrade(req, socket, head, (ws) => {
      run(ws, req, method, call, authorization, caller).catch((err: unknown) => {
        recordFailure(
          logger,
          call,
          failureFor(hrpcErrors.internal, undefined, { cause: err }),
          method.procedure,
        );
        ws.terminate();
      });
    });
  }

  /**
   * The request message, or the Failure to end the stream with. Its timer and
   * listeners go once it is settled, so an open stream holds none of them.
   */
  function firstMessage(ws: WebSocket): Promise<Uint8Array | Failure> {
    return new Promise((resolve) => {
      const settle = (result: Uint8Array | Failure): void => {
        clearTimeout(timer);
        ws.off("message", onMessage);
        ws.off("close", onClose);
        resolve(result);
      };
      const onMessage = (data: RawData, isBinary: boolean): void => {
        const bytes = Buffer.isBuffer(data)
          ? data
          : Array.isArray(data)
            ? Buffer.concat(data)
            : Buffer.from(data);
        settle(isBinary ? bytes : bad("send the request as one binary message"));
      };
      const onClose = (): void => settle(bad("closed before the request"));
      const timer = setTimeout(
        () => settle(bad(`no request arrived within ${options.firstMessageTimeoutMs} ms`)),
        options.firstMessageTimeoutMs,
      );
      ws.on("message", onMessage);
      ws.on("close", onClose);
    });
  }

  /** Listeners every socket shares, rather than closures of its own. */
  function leaveWaiting(this: WebSocket): void {
    waiting.delete(this);
  }
  function socketError(err: Error): void {
    logger.debug({ err }, "hRPC WebSocket error");
  }
  const pinger = createPinger(options.pingIntervalMs);

  async function run(
    ws: WebSocket,
    req: IncomingMessage,
    method: RpcMethod,
    call: CallRecord,
    authorization: string | undefined,
    caller: Caller,
  ): Promise<void> {
    pinger.watch(ws);
    ws.on("close", leaveWaiting);
    ws.on("error", socketError);
    const endWith = (failure: Failure, closeCode: number): void => {
      sendFrame(ws, 1, encodeHrpcError(recordFailure(logger, call, failure, method.procedure)));
      ws.close(closeCode);
    };

    waiting.add(ws);
    const request = await firstMessage(ws);
    if (!waiting.delete(ws)) return; // closed (or shut down) while waiting
    if (!(request instanceof Uint8Array)) return endWith(request, 1008);

    const direct = options.direct?.methods.get(method.method);
    const message = direct && decode(method, request);
    if (direct && message) {
      const served = options.direct?.streams.serve(
        {
          method: method.method,
          record: call,
          header: {
            get: (name) =>
              name.toLowerCase() === "authorization" ? (authorization ?? null) : null,
          },
          deadline: undefined,
        },
        direct.start(message, { caller, protocol: "hrpc", slotHeld: true }),
        {
          message: (response) =>
            sendFrame(ws, 0, method.serialization.getO(true).serialize(response)),
          // The same frames and close codes as a stream through the handler, below.
          end: (failure) => {
            if (failure) sendFrame(ws, 1, encodeHrpcError(failure));
            ws.close(1000);
          },
        },
      );
      if (served) ws.once("close", () => served.cancel());
      return;
    }

    const abort = new AbortController();
    ws.once("close", () => abort.abort());
    const uRes = await method.serve(
      connectRequestFor(req, {
        contentType: "application/connect+proto",
        body: createAsyncIterable([encodeEnvelope(0, request)]),
        signal: abort.signal,
        authorization,
        call,
        caller,
        streamSlotHeld: true,
      }),
    );
    if (uRes.body) {
      for await (const envelope of pipe(
        uRes.body,
        transformSplitEnvelope(Number.MAX_SAFE_INTEGER),
      )) {
        if ((envelope.flags & endStreamFlag) === endStreamFlag) break;
        sendFrame(ws, 0, envelope.data);
      }
    }
    // Every failure is recorded by the boundary; a stream that ended on one sends it.
    if (call.failure) return endWith(call.failure, 1000);
    if (uRes.status !== 200) return endWith(failureFor(hrpcErrors.internal), 1011);
    ws.close(1000);
  }

  return {
    upgrade,
    close() {
      pinger.close();
      for (const ws of waiting) {
        sendFrame(ws, 1, encodeHrpcError(failureFor(hrpcErrors.unavailable)));
        ws.close(1001);
      }
      waiting.clear();
    },
  };
}

/** The request message, or undefined when it does not decode (the handler then refuses it). */
function decode(method: RpcMethod, request: Uint8Array): Message | undefined {
  try {
    return method.serialization.getI(true).parse(request);
  } catch {
    return undefined;
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
