import {
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  fromJsonString,
} from "@bufbuild/protobuf";
import {
  createContextValues,
  createServiceImplSpec,
  type Interceptor,
  type MethodImplSpec,
} from "@connectrpc/connect";
import {
  createAsyncIterable,
  createMethodSerializationLookup,
  type MethodSerializationLookup,
  readAllBytes,
  type UniversalHandler,
  type UniversalServerRequest,
  type UniversalServerResponse,
  validateUniversalHandlerOptions,
} from "@connectrpc/connect/protocol";
import * as connect from "@connectrpc/connect/protocol-connect";
import * as grpc from "@connectrpc/connect/protocol-grpc";
import * as grpcWeb from "@connectrpc/connect/protocol-grpc-web";
import type { Logger } from "pino";
import { type ErrorSpec, hrpcErrors } from "../../errors.js";
import {
  type CallObserver,
  type CallRecord,
  callRecordKey,
  type Failure,
  failureFor,
  failureOf,
  newCall,
  observeCall,
  recordFailure,
} from "./failure.js";
import {
  errorResponse,
  type ProtocolName,
  type RequestFormat,
  requestEncodingHeader,
  requestFormat,
  timeoutHeader,
  timeoutHeaderValid,
} from "./protocols.js";

/**
 * cadenza's own registration of the Connect handlers: where every RPC
 * request enters. Before a request reaches connect-es's protocol handler it
 * is admitted here: its Content-Type picks the protocol, its headers
 * (deadline, compression) are checked, and a unary body is read under
 * READ_MAX_BYTES, unframed and decoded. Whatever is wrong is answered here, in
 * the protocol's own error format, through the one normaliser (failure.ts),
 * so the runtime is never left to report a client's mistake as Internal.
 * Streaming requests are read by the error interceptor, which knows the same.
 */

export interface RpcService {
  readonly service: DescService;
  // biome-ignore lint/suspicious/noExplicitAny: any service's implementation
  readonly impl: any;
}

export interface RpcRouterOptions {
  readonly logger: Logger;
  readonly interceptors: readonly Interceptor[];
  readonly readMaxBytes: number;
  /** The longest deadline a client may ask for. */
  readonly maxTimeoutMs: number;
  readonly shutdownSignal: AbortSignal;
  /** Told of every call the router itself refuses (the interceptor tells of the rest). */
  readonly observe?: CallObserver;
}

export interface RpcMethod {
  readonly service: DescService;
  readonly method: DescMethod;
  readonly requestPath: string;
  /** `package.Service/Method`, for logs. */
  readonly procedure: string;
  /** Serves one request on this method's path, in whichever protocol it speaks. */
  serve(req: UniversalServerRequest): Promise<UniversalServerResponse>;
  /**
   * The checks `serve` makes before a request reaches the protocol's
   * handler (its Content-Type, HTTP method, compression and deadline
   * headers): the request's format when it passes, else the answer refusing
   * it, its failure recorded on `call`. For paths that serve a call without
   * the handler (direct-http.ts), so that they refuse exactly what it does.
   */
  admit(
    call: CallRecord,
    httpMethod: string,
    header: Pick<Headers, "get">,
  ): { readonly format: RequestFormat } | { readonly refused: UniversalServerResponse };
  /** Decodes requests and encodes responses exactly as the method's handlers do. */
  readonly serialization: MethodSerializationLookup<DescMessage, DescMessage>;
  /**
   * Refuses a request on this method's path that cannot even be handed to
   * `serve` (its Host header forms no URL), as a malformed request in the
   * protocol its Content-Type names.
   */
  refuse(contentType: string, message: string): UniversalServerResponse;
}

export interface RpcRouter {
  readonly methods: ReadonlyMap<string, RpcMethod>;
  /** The options every handler was made with (limits, JSON options, shutdown signal). */
  readonly handlerOptions: ReturnType<typeof validateUniversalHandlerOptions>;
  /**
   * The answer to a request for a path that is no method, in the protocol its
   * Content-Type names; undefined when it names none of cadenza's protocols.
   */
  unknownMethod(path: string, contentType: string): UniversalServerResponse | undefined;
}

type ProtocolHandlers = Record<ProtocolName, UniversalHandler>;

export function createRpcRouter(
  services: readonly RpcService[],
  options: RpcRouterOptions,
): RpcRouter {
  const { logger } = options;
  const handlerOptions = validateUniversalHandlerOptions({
    interceptors: [...options.interceptors],
    readMaxBytes: options.readMaxBytes,
    maxTimeoutMs: options.maxTimeoutMs,
    shutdownSignal: options.shutdownSignal,
    // No compression: auth messages are tiny, and admitting a compressed body
    // would mean inflating it under the limit twice.
    acceptCompression: [],
  });
  const factories = {
    connect: connect.createHandlerFactory(handlerOptions),
    grpc: grpc.createHandlerFactory(handlerOptions),
    "grpc-web": grpcWeb.createHandlerFactory(handlerOptions),
  };

  const methods = new Map<string, RpcMethod>();
  for (const { service, impl } of services) {
    for (const spec of Object.values(createServiceImplSpec(service, impl).methods)) {
      const method = createMethod(spec as MethodImplSpec, {
        connect: factories.connect(spec as MethodImplSpec),
        grpc: factories.grpc(spec as MethodImplSpec),
        "grpc-web": factories["grpc-web"](spec as MethodImplSpec),
      });
      methods.set(method.requestPath, method);
    }
  }

  function createMethod(spec: MethodImplSpec, handlers: ProtocolHandlers): RpcMethod {
    const { method } = spec;
    const requestPath = `/${method.parent.typeName}/${method.name}`;
    const procedure = `${method.parent.typeName}/${method.name}`;
    const unary = method.methodKind === "unary";

    /** Answers `spec` in the request's format, recording it as the call's failure. */
    const refuse = (
      call: CallRecord,
      format: Pick<RequestFormat, "protocol" | "stream" | "responseContentType">,
      failure: Failure,
    ): UniversalServerResponse => {
      call.protocol ??= format.protocol;
      const answer = errorResponse(format, recordFailure(logger, call, failure, procedure));
      observeCall(options.observe, call, procedure);
      return answer;
    };
    const bad = (message: string): Failure =>
      failureFor(unary ? hrpcErrors.badUnaryRequest : hrpcErrors.badStreamingRequest, message);

    const admit: RpcMethod["admit"] = (call, httpMethod, header) => {
      const contentType = header.get("content-type") ?? "";
      const format = requestFormat(contentType);
      if (format) call.protocol ??= format.protocol;
      if (format === undefined || "unsupported" in format) {
        const family = format?.protocol ?? "connect";
        return {
          refused: refuse(
            call,
            fallbackFormat(family),
            bad(
              `Content-Type ${contentType || "(none)"} is not supported here; ${method.name} takes ${accepted(unary)}`,
            ),
          ),
        };
      }
      if (httpMethod !== "POST") {
        return { refused: refuse(call, format, bad(`${method.name} takes POST requests`)) };
      }
      if (format.protocol === "connect" && format.stream === unary) {
        return {
          refused: refuse(
            call,
            format,
            bad(
              `${method.name} is ${unary ? "unary" : "streaming"}; send it as ${accepted(unary)}`,
            ),
          ),
        };
      }
      const encoding = header.get(requestEncodingHeader(format));
      if (encoding !== null && encoding.toLowerCase() !== "identity") {
        return {
          refused: refuse(
            call,
            format,
            failureFor(
              hrpcErrors.notImplemented,
              `compressed requests (${encoding}) are not accepted; send the request uncompressed`,
            ),
          ),
        };
      }
      const deadline = header.get(timeoutHeader(format.protocol));
      if (!timeoutHeaderValid(format.protocol, deadline, options.maxTimeoutMs)) {
        return {
          refused: refuse(
            call,
            format,
            bad(
              `the ${timeoutHeader(format.protocol)} header must be a timeout of at most ${options.maxTimeoutMs} ms`,
            ),
          ),
        };
      }
      return { format };
    };

    return {
      service: method.parent,
      method,
      requestPath,
      procedure,
      admit,
      serialization: createMethodSerializationLookup(
        method,
        handlerOptions.binaryOptions,
        handlerOptions.jsonOptions,
        handlerOptions,
      ),
      refuse(contentType, message) {
        const format = requestFormat(contentType);
        const answer =
          format === undefined || "unsupported" in format
            ? fallbackFormat(format?.protocol ?? "connect")
            : format;
        return refuse(newCall(answer.protocol), answer, bad(message));
      },
      async serve(req) {
        const values = req.contextValues ?? createContextValues();
        let call = values.get(callRecordKey);
        if (call === undefined) {
          call = newCall();
          values.set(callRecordKey, call);
        }
        const admission = admit(call, req.method, req.header);
        if ("refused" in admission) return admission.refused;
        const { format } = admission;
        let header = req.header;
        if (header.get(requestEncodingHeader(format)) !== null) {
          // Content-codings are case-insensitive (RFC 9110 §8.4.1), but
          // connect-es knows "identity" only as written: it would refuse
          // "IDENTITY" inside the runtime. Uncompressed needs no header.
          header = new Headers(header);
          header.delete(requestEncodingHeader(format));
        }
        let admitted: UniversalServerRequest = { ...req, header, contextValues: values };
        if (unary) {
          const read = await admitUnary(req, format, method);
          if ("failure" in read) return refuse(call, format, read.failure);
          admitted = { ...admitted, body: createAsyncIterable([read.body]) };
        }
        const res = await handlers[format.protocol](admitted);
        if (format.protocol === "connect" && unary && res.status !== 200 && !call.failure) {
          // The runtime failed after the handler returned (encoding the answer).
          return repairConnectUnary(res, (failure) =>
            recordFailure(logger, call, failure, procedure),
          );
        }
        return res;
      },
    };
  }

  /** Reads a unary request's body under the limit, unframes and decodes it. */
  async function admitUnary(
    req: UniversalServerRequest,
    format: RequestFormat,
    method: DescMethod,
  ): Promise<{ body: Uint8Array } | { failure: Failure }> {
    const framed = format.protocol !== "connect";
    const limit = options.readMaxBytes + (framed ? 5 : 0);
    let body: Uint8Array;
    try {
      body = await readAllBytes(
        req.body as AsyncIterable<Uint8Array>,
        limit,
        req.header.get("content-length"),
      );
    } catch (err) {
      return { failure: failureOf(err, "request", false) };
    }
    const fail = (message: string, spec: ErrorSpec = hrpcErrors.badUnaryRequest) => ({
      failure: failureFor(spec, message),
    });
    let message = body;
    if (framed) {
      if (body.byteLength < 5) return fail("the request is not one gRPC message frame");
      const flags = body[0] ?? 0;
      const length = new DataView(body.buffer, body.byteOffset).getUint32(1);
      if (flags !== 0) {
        return fail(
          `the message frame has flags 0x${flags.toString(16).padStart(2, "0")}; only 0x00 (uncompressed) is accepted`,
        );
      }
      if (length > options.readMaxBytes) return { failure: failureFor(hrpcErrors.requestTooLarge) };
      if (length !== body.byteLength - 5) {
        return fail(`the request must be exactly one message frame of ${length} bytes`);
      }
      message = body.subarray(5);
    }
    try {
      if (format.binary) fromBinary(method.input, message);
      else
        fromJsonString(method.input, new TextDecoder().decode(message), {
          ignoreUnknownFields: true,
        });
    } catch (err) {
      return fail(
        `the request does not decode as ${method.input.typeName}: ${(err as Error).message}`,
      );
    }
    return { body };
  }

  return {
    methods,
    handlerOptions,
    unknownMethod(path, contentType) {
      const format = requestFormat(contentType);
      if (format === undefined) return undefined;
      const failure = recordFailure(
        logger,
        undefined,
        failureFor(hrpcErrors.notImplemented, `there is no method at ${path.slice(0, 200)}`),
        path.slice(0, 200),
      );
      return errorResponse(
        "unsupported" in format ? fallbackFormat(format.protocol) : format,
        failure,
      );
    },
  };
}

/** How to answer a request of a protocol family whose exact format is unknown. */
function fallbackFormat(protocol: ProtocolName) {
  switch (protocol) {
    case "connect":
      return {
        protocol,
        stream: false,
        responseContentType: connect.contentTypeUnaryJson,
      } as const;
    case "grpc":
      return { protocol, stream: false, responseContentType: grpc.contentTypeProto } as const;
    case "grpc-web":
      return { protocol, stream: false, responseContentType: grpcWeb.contentTypeProto } as const;
  }
}

function accepted(unary: boolean): string {
  return unary
    ? "application/proto or application/json (Connect), application/grpc, application/grpc-web or application/hrpc"
    : "application/connect+proto or application/connect+json (Connect), application/grpc, application/grpc-web, or a WebSocket (hRPC)";
}

/** Re-encodes a Connect unary error that the runtime produced on its own. */
async function repairConnectUnary(
  res: UniversalServerResponse,
  record: (failure: Failure) => Failure,
): Promise<UniversalServerResponse> {
  const body = res.body ? await readAllBytes(res.body, 1 << 20) : new Uint8Array();
  const fallback = new Error(`HTTP ${res.status}`);
  const err = connect.errorFromJsonBytes(body, undefined, fallback as never);
  return errorResponse(
    { protocol: "connect", stream: false, responseContentType: connect.contentTypeUnaryJson },
    record(failureOf(err, "handler", false)),
  );
}
