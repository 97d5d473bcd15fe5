import { create, toBinary } from "@bufbuild/protobuf";
import { hrpcStatusOf } from "../../errors.js";
import { ErrorSchema, RetryInfoSchema } from "../../gen/hrpc/v1/hrpc_pb.js";
import type { Failure } from "../rpc/failure.js";
import { HRPC_CONTENT_TYPE, hrpcHeaders } from "./routing.js";

/** A Failure as hRPC carries it: an HTTP status and a binary `hrpc.v1.Error`. */
export interface HrpcErrorResponse {
  readonly status: number;
  readonly headers: Record<string, string | number>;
  readonly body: Uint8Array;
}

/** The `hrpc.v1.Error` message of a Failure (also the payload of a `0x01` stream frame). */
export function encodeHrpcError(failure: Failure): Uint8Array {
  const details =
    failure.retryAfterSeconds === undefined
      ? new Uint8Array()
      : toBinary(
          RetryInfoSchema,
          create(RetryInfoSchema, { retryAfter: failure.retryAfterSeconds }),
        );
  return toBinary(
    ErrorSchema,
    create(ErrorSchema, {
      identifier: failure.spec.identifier,
      humanMessage: failure.message,
      details,
    }),
  );
}

/** The HTTP answer for a Failure: the spec's hRPC status, both hRPC headers, `Retry-After` when known. */
export function hrpcErrorResponse(failure: Failure): HrpcErrorResponse {
  const body = encodeHrpcError(failure);
  const headers: Record<string, string | number> = {
    ...hrpcHeaders,
    "content-length": body.byteLength,
  };
  if (failure.retryAfterSeconds !== undefined) headers["retry-after"] = failure.retryAfterSeconds;
  return { status: hrpcStatusOf(failure.spec), headers, body };
}

/** The same answer as raw HTTP/1.1 bytes, for a WebSocket handshake refused on its socket. */
export function hrpcErrorHttpBytes(failure: Failure): Buffer {
  const { status, headers, body } = hrpcErrorResponse(failure);
  const lines = [`HTTP/1.1 ${status} hRPC error`, `Content-Type: ${HRPC_CONTENT_TYPE}`];
  for (const [name, value] of Object.entries(headers)) {
    if (name !== "content-type") lines.push(`${name}: ${value}`);
  }
  lines.push("Connection: close", "", "");
  return Buffer.concat([Buffer.from(lines.join("\r\n")), body]);
}
