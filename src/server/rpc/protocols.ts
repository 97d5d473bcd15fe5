import type { UniversalServerResponse } from "@connectrpc/connect/protocol";
import { createAsyncIterable, encodeEnvelope } from "@connectrpc/connect/protocol";
import * as connect from "@connectrpc/connect/protocol-connect";
import * as grpc from "@connectrpc/connect/protocol-grpc";
import * as grpcWeb from "@connectrpc/connect/protocol-grpc-web";
import { type Failure, toConnectError } from "./failure.js";

/**
 * The three Connect-family protocols cadenza serves on its method paths, told
 * apart by Content-Type, and how each carries an error.
 */

export type ProtocolName = "connect" | "grpc" | "grpc-web";

/** What a request's Content-Type says about its protocol and encoding. */
export interface RequestFormat {
  readonly protocol: ProtocolName;
  readonly binary: boolean;
  /** Connect only: the streaming (enveloped) variant. */
  readonly stream: boolean;
  /** The Content-Type to answer errors with. */
  readonly responseContentType: string;
}

/**
 * The format a Content-Type names, or, for one of a known protocol family
 * that this server does not speak (`application/grpc+xml`,
 * `application/grpc-web-text`), the family alone; undefined for any other.
 */
export function requestFormat(
  contentType: string,
): RequestFormat | { readonly protocol: ProtocolName; readonly unsupported: true } | undefined {
  const lower = contentType.toLowerCase();
  if (lower.startsWith("application/grpc-web")) {
    const t = grpcWeb.parseContentType(contentType);
    if (!t || t.text) return { protocol: "grpc-web", unsupported: true };
    return {
      protocol: "grpc-web",
      binary: t.binary,
      stream: false,
      responseContentType: t.binary ? grpcWeb.contentTypeProto : grpcWeb.contentTypeJson,
    };
  }
  if (lower.startsWith("application/grpc")) {
    const t = grpc.parseContentType(contentType);
    if (!t) return { protocol: "grpc", unsupported: true };
    return {
      protocol: "grpc",
      binary: t.binary,
      stream: false,
      responseContentType: t.binary ? grpc.contentTypeProto : grpc.contentTypeJson,
    };
  }
  if (/^application\/(connect\+|json|proto)/.test(lower)) {
    const t = connect.parseContentType(contentType);
    if (!t) return { protocol: "connect", unsupported: true };
    const responseContentType = t.stream
      ? t.binary
        ? connect.contentTypeStreamProto
        : connect.contentTypeStreamJson
      : connect.contentTypeUnaryJson;
    return { protocol: "connect", binary: t.binary, stream: t.stream, responseContentType };
  }
  return undefined;
}

/** The header each protocol carries its deadline in. */
export function timeoutHeader(protocol: ProtocolName): string {
  return protocol === "connect" ? connect.headerTimeout : grpc.headerTimeout;
}

/** The headers that say a request body is compressed, by protocol and variant. */
export function requestEncodingHeader(format: RequestFormat): string {
  if (format.protocol !== "connect") return grpc.headerEncoding;
  return format.stream ? connect.headerStreamEncoding : connect.headerUnaryEncoding;
}

/**
 * Whether a deadline header is one the protocol's own handler accepts and
 * within `maxTimeoutMs` (connect-es would otherwise arm a timer for whatever
 * was asked, however long, before refusing it).
 */
export function timeoutHeaderValid(
  protocol: ProtocolName,
  value: string | null,
  maxTimeoutMs: number,
): boolean {
  const parsed =
    protocol === "connect"
      ? connect.parseTimeout(value, maxTimeoutMs)
      : grpc.parseTimeout(value, maxTimeoutMs);
  return parsed.error === undefined;
}

/**
 * A Failure as the protocol answers it before any response was sent:
 * Connect unary as an HTTP error with a JSON body, Connect streams as an
 * end-of-stream message, gRPC and gRPC-Web as a trailers-only response. The
 * `hrpc.v1.Error` detail rides along in each.
 */
export function errorResponse(
  format: Pick<RequestFormat, "protocol" | "stream" | "responseContentType">,
  failure: Failure,
): UniversalServerResponse {
  const error = toConnectError(failure);
  const header = new Headers({ "content-type": format.responseContentType });
  if (format.protocol === "connect" && !format.stream) {
    for (const [key, value] of error.metadata) header.set(key, value);
    const body = connect.errorToJsonBytes(error, {});
    header.set("content-length", String(body.byteLength));
    return {
      status: connect.codeToHttpStatus(error.code),
      header,
      body: createAsyncIterable([body]),
    };
  }
  if (format.protocol === "connect") {
    const end = new TextEncoder().encode(
      JSON.stringify(connect.endStreamToJson(error.metadata, error, undefined)),
    );
    return {
      status: 200,
      header,
      body: createAsyncIterable([encodeEnvelope(connect.endStreamFlag, end)]),
    };
  }
  grpc.setTrailerStatus(header, error);
  return { status: 200, header };
}
