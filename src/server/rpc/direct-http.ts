import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { DescMethod, Message } from "@bufbuild/protobuf";
import { encodeEnvelope, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import * as connect from "@connectrpc/connect/protocol-connect";
import * as grpc from "@connectrpc/connect/protocol-grpc";
import * as grpcWeb from "@connectrpc/connect/protocol-grpc-web";
import type { Caller } from "../../caller.js";
import type { DirectMethod, DirectSink, DirectStreams } from "./direct-stream.js";
import { type CallRecord, type Failure, newCall, toConnectError } from "./failure.js";
import type { RequestFormat } from "./protocols.js";
import type { RpcMethod, RpcRouter } from "./router.js";

/**
 * The direct stream path (direct-stream.ts) over Connect, gRPC and gRPC-Web,
 * on Node's HTTP/1.1 and HTTP/2 requests. A request is admitted by the
 * router's own checks (`RpcMethod.admit`), its body read and decoded with
 * the method's own serialization, and its answer framed with connect-es's
 * own envelope, end-stream and trailer encoders, written in the order its
 * Node adapter writes them (headers with the first message or at the end;
 * gRPC's status as trailers), so the bytes on the wire are the pipeline's.
 *
 * Only a request of the ordinary shape is served here: exactly one
 * uncompressed message that decodes. Anything else (no message, two, a
 * flag, a bad length, an undecodable body, a body over READ_MAX_BYTES or
 * one that does not finish) goes to the pipeline, with the bytes read so far
 * put back in front of the rest, so it is refused exactly as before.
 */

type NodeRequest = IncomingMessage | Http2ServerRequest;
type NodeResponse = ServerResponse | Http2ServerResponse;

export interface DirectHttp {
  /** Whether the direct path serves this method. */
  serves(method: RpcMethod): boolean;
  /**
   * Serves one request for a method it serves; resolves once the call has
   * started (or been answered), not when it ends. `pipeline` serves the
   * request through Connect's handler instead, with the body as read;
   * `answer` writes the router's refusal.
   */
  serve(
    method: RpcMethod,
    req: NodeRequest,
    res: NodeResponse,
    caller: Caller,
    pipeline: (body: AsyncIterable<Uint8Array>, call: CallRecord) => Promise<void>,
    answer: (res: UniversalServerResponse) => Promise<void>,
  ): Promise<void>;
}

export interface DirectHttpOptions {
  /** The methods served directly, by descriptor. */
  readonly methods: ReadonlyMap<DescMethod, DirectMethod>;
  readonly streams: DirectStreams;
  readonly handlerOptions: RpcRouter["handlerOptions"];
}

export function createDirectHttp(options: DirectHttpOptions): DirectHttp {
  const { methods, streams, handlerOptions } = options;
  const { readMaxBytes, maxTimeoutMs } = handlerOptions;
  const endStream = connect.createEndStreamSerialization(handlerOptions.jsonOptions);

  /** The one request message, or undefined when the body is not exactly one good one. */
  const decode = (method: RpcMethod, format: RequestFormat, body: Buffer): Message | undefined => {
    if (body.byteLength < 5 || body[0] !== 0) return undefined;
    const length = body.readUInt32BE(1);
    if (length > readMaxBytes || length !== body.byteLength - 5) return undefined;
    try {
      return method.serialization.getI(format.binary).parse(body.subarray(5));
    } catch {
      return undefined;
    }
  };

  return {
    serves: (method) => methods.has(method.method),

    async serve(method, req, res, caller, pipeline, answer) {
      const direct = methods.get(method.method);
      const call = newCall(undefined, caller.address);
      const header = nodeHeaders(req.headers);
      const admission = method.admit(call, req.method ?? "", header);
      if ("refused" in admission) return answer(admission.refused);
      const { format } = admission;
      const timeout =
        format.protocol === "connect"
          ? connect.parseTimeout(header.get(connect.headerTimeout), maxTimeoutMs)
          : grpc.parseTimeout(header.get(grpc.headerTimeout), maxTimeoutMs);
      const body = await readBody(req, readMaxBytes + 5);
      const message = direct && body.complete ? decode(method, format, body.bytes) : undefined;
      if (!direct || message === undefined) return pipeline(replay(body), call);

      const sink = new HttpSink(res, format, method.serialization.getO(format.binary), endStream);
      const served = streams.serve(
        {
          method: method.method,
          record: call,
          header,
          deadline:
            timeout.timeoutMs === undefined ? undefined : call.startedAt + timeout.timeoutMs,
        },
        direct.start(message, { caller, protocol: format.protocol, slotHeld: false }),
        sink,
      );
      const gone = (): void => {
        sink.done = true;
        served.cancel();
      };
      // The client may have gone while the body was read.
      if (isClosed(res)) gone();
      else res.on("close", gone);
    },
  };
}

/**
 * Writes a call as connect-es's handlers and its Node adapter do: headers
 * with the first message (or at the end), each message in its envelope, then
 * Connect's end-of-stream message, gRPC-Web's trailer frame or gRPC's
 * trailers. One object per open stream, so a class.
 */
class HttpSink implements DirectSink<Message> {
  private headed = false;
  /** Ended, or the connection closed: nothing more is written. */
  done = false;

  constructor(
    private readonly res: NodeResponse,
    private readonly format: RequestFormat,
    private readonly serializer: { serialize(message: Message): Uint8Array },
    private readonly endStream: ReturnType<typeof connect.createEndStreamSerialization>,
  ) {}

  message(message: Message): void {
    if (!this.done) this.write(encodeEnvelope(0, this.serializer.serialize(message)));
  }

  end(failure: Failure | undefined): void {
    if (this.done) return;
    this.done = true;
    if (this.res.writableEnded) return;
    const error = failure && toConnectError(failure);
    if (this.format.protocol === "connect") {
      const end = error ? { metadata: new Headers(), error } : { metadata: new Headers() };
      this.write(encodeEnvelope(connect.endStreamFlag, this.endStream.serialize(end)));
    } else {
      const trailer = new Headers({ [grpc.headerGrpcStatus]: grpc.grpcStatusOk });
      if (error) grpc.setTrailerStatus(trailer, error);
      if (this.format.protocol === "grpc-web") {
        this.write(encodeEnvelope(grpcWeb.trailerFlag, grpcWeb.trailerSerialize(trailer)));
      } else {
        this.head();
        this.res.addTrailers(Object.fromEntries(trailer));
      }
    }
    this.res.end();
  }

  private head(): void {
    if (this.headed) return;
    this.headed = true;
    this.res.writeHead(200, { "content-type": this.format.responseContentType });
  }

  private write(bytes: Uint8Array): void {
    this.head();
    // Steps are small and a flow has at most 256: nothing to wait for.
    (this.res as ServerResponse).write(bytes);
  }
}

/** Whether the client has gone already (the connection or HTTP/2 stream closed). */
function isClosed(res: NodeResponse): boolean {
  if ("stream" in res) return res.stream.destroyed;
  return res.destroyed || res.socket === null || res.socket.destroyed;
}

/** Node's request headers as the `get` of fetch's Headers (names lower case, repeats joined). */
function nodeHeaders(headers: IncomingHttpHeaders): Pick<Headers, "get"> {
  return {
    get(name) {
      const value = headers[name.toLowerCase()];
      if (value === undefined) return null;
      return Array.isArray(value) ? value.join(", ") : String(value);
    },
  };
}

interface ReadBody {
  /** The bytes read (all of them when complete, else up to just over the limit). */
  readonly bytes: Buffer;
  /** The body ended within the limit. */
  readonly complete: boolean;
  /** The request, to read on from, when the body did not end within the limit. */
  readonly rest: NodeRequest | undefined;
}

/** Reads a request body, stopping (paused) once it passes `limit` bytes. */
function readBody(req: NodeRequest, limit: number): Promise<ReadBody> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (complete: boolean): void => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onStop);
      req.off("close", onStop);
      resolve({ bytes: Buffer.concat(chunks), complete, rest: complete ? undefined : req });
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      size += chunk.byteLength;
      if (size > limit) {
        req.pause();
        done(false);
      }
    };
    const onEnd = (): void => done(true);
    const onStop = (): void => done(false);
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("error", onStop);
    req.once("close", onStop);
  });
}

/** The body for the pipeline: what was read, then the rest of the request. */
async function* replay(body: ReadBody): AsyncGenerator<Uint8Array> {
  if (body.bytes.byteLength > 0) yield body.bytes;
  if (body.rest) for await (const chunk of body.rest) yield chunk as Buffer;
}
