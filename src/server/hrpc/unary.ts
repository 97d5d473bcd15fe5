import type { ServerResponse } from "node:http";
import type { Http2ServerResponse } from "node:http2";
import { createContextValues } from "@connectrpc/connect";
import { readAllBytes, type UniversalServerRequest } from "@connectrpc/connect/protocol";
import type { Logger } from "pino";
import { type Caller, callerKey, streamSlotHeldKey } from "../../caller.js";
import { hrpcErrors } from "../../errors.js";
import {
  type CallRecord,
  callRecordKey,
  type Failure,
  failureFor,
  newCall,
  recordFailure,
} from "../rpc/failure.js";
import type { RpcMethod } from "../rpc/router.js";
import { hrpcErrorResponse } from "./errors.js";
import { hrpcHeaders, isHrpcContentType, type NodeRequest, pathOf } from "./routing.js";

type NodeResponse = ServerResponse | Http2ServerResponse;

/** A Connect request for `method` that carries an hRPC call's body and session. */
export function connectRequestFor(
  req: NodeRequest,
  init: {
    contentType: string;
    body: AsyncIterable<Uint8Array>;
    signal: AbortSignal;
    authorization: string | undefined;
    call: CallRecord;
    caller: Caller;
    /** The WebSocket already holds one of the caller's stream slots. */
    streamSlotHeld?: boolean;
  },
): UniversalServerRequest {
  const header = new Headers({ "content-type": init.contentType });
  if (init.authorization) header.set("authorization", init.authorization);
  return {
    httpVersion: req.httpVersion,
    url: `http://cadenza${req.url ?? "/"}`,
    method: "POST",
    header,
    body: init.body,
    signal: init.signal,
    contextValues: createContextValues()
      .set(callRecordKey, init.call)
      .set(callerKey, init.caller)
      .set(streamSlotHeldKey, init.streamSlotHeld ?? false),
  };
}

function send(res: NodeResponse, failure: Failure): void {
  const { status, headers, body } = hrpcErrorResponse(failure);
  res.writeHead(status, headers);
  res.end(body);
}

/**
 * Serves an hRPC unary call: the body is handed to the method's Connect
 * binary handler unchanged (the bytes are the same), and the answer, or the
 * call's recorded Failure, is written back as hRPC.
 */
export async function serveUnary(
  methods: ReadonlyMap<string, RpcMethod>,
  logger: Logger,
  caller: Caller,
  req: NodeRequest,
  res: NodeResponse,
): Promise<void> {
  const path = pathOf(req.url);
  const call: CallRecord = newCall("hrpc", caller.address);
  const refuse = (failure: Failure): void =>
    send(res, recordFailure(logger, call, failure, path.slice(1, 200)));
  const bad = (message: string) => failureFor(hrpcErrors.badUnaryRequest, message);

  const method = methods.get(path);
  if (!isHrpcContentType(req.headers["content-type"] ?? "")) {
    return refuse(bad("hRPC calls have Content-Type: application/hrpc"));
  }
  if (req.method !== "POST") return refuse(bad("hRPC unary calls are POSTs"));
  if (!method) return refuse(failureFor(hrpcErrors.notFound, `no method at ${path.slice(0, 200)}`));
  if (method.method.methodKind !== "unary") {
    return refuse(bad(`${method.method.name} streams: open a WebSocket on this path instead`));
  }
  const abort = new AbortController();
  res.once("close", () => abort.abort());
  const uRes = await method.serve(
    connectRequestFor(req, {
      contentType: "application/proto",
      body: req as AsyncIterable<Uint8Array>,
      signal: abort.signal,
      authorization: req.headers.authorization,
      call,
      caller,
    }),
  );
  if (call.failure) return send(res, call.failure);
  const body = uRes.body
    ? await readAllBytes(uRes.body, Number.MAX_SAFE_INTEGER)
    : new Uint8Array();
  if (uRes.status !== 200) {
    // Every failure is recorded by the boundary; one that is not is our fault.
    return refuse(failureFor(hrpcErrors.internal, hrpcErrors.internal.message));
  }
  res.writeHead(200, { ...hrpcHeaders, "content-length": body.byteLength });
  res.end(body);
}
