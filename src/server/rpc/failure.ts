import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey } from "@connectrpc/connect";
import type { Logger } from "pino";
import { type ErrorSpec, HarmonyError, hrpcErrors } from "../../errors.js";
import { ErrorSchema, RetryInfoSchema } from "../../gen/hrpc/v1/hrpc_pb.js";

/**
 * The RPC error boundary's one normaliser. Whatever fails in a call (the
 * domain, the Connect runtime, the transport) becomes a {@link Failure}: the
 * spec the client is answered with, the message, and how loudly to log it.
 * Every protocol writes a Failure in its own format (Connect and gRPC carry
 * the identifier in an `hrpc.v1.Error` detail, hRPC as its body), so no
 * protocol decides an error on its own.
 */

export type FailureLevel = "debug" | "warn" | "error";

export interface Failure {
  /** Identifier, code and hRPC status. */
  readonly spec: ErrorSpec;
  /** The human message sent (never an internal detail). */
  readonly message: string;
  readonly retryAfterSeconds: number | undefined;
  /** How the boundary logs it: client mistakes at debug, our own faults at error. */
  readonly level: FailureLevel;
  readonly cause: unknown;
}

/**
 * Where an error arose: in reading the client's request (its framing, size,
 * encoding or headers: the client's mistake whatever the runtime's code), or
 * in handling it.
 */
export type FailureOrigin = "request" | "handler";

/** What the boundary knows of one call, shared by every layer it passes through. */
export interface CallRecord {
  /** The call's failure, once the boundary has normalised one. */
  failure: Failure | undefined;
  /** The protocol it came in by (connect, grpc, grpc-web, hrpc), once known. */
  protocol?: string;
  /** When the request arrived (performance.now()). */
  readonly startedAt: number;
  /** The client's address, as the boundary believes it. */
  readonly address: string;
  /** Set once the call's end has been observed (logged and measured). */
  observed: boolean;
}

/** A new call's record. */
export function newCall(protocol?: string, address = "unknown"): CallRecord {
  return {
    failure: undefined,
    ...(protocol === undefined ? {} : { protocol }),
    startedAt: performance.now(),
    address,
    observed: false,
  };
}

/** What the boundary reports of every call once it has ended. */
export type CallObserver = (end: {
  readonly procedure: string;
  readonly protocol: string;
  /** The Connect code's name ("OK" for success). */
  readonly code: string;
  readonly durationMs: number;
  readonly address: string;
}) => void;

/** Observes a call's end, once; its code is its failure's, or OK. */
export function observeCall(
  observe: CallObserver | undefined,
  call: CallRecord | undefined,
  procedure: string,
): void {
  if (!observe || !call || call.observed) return;
  call.observed = true;
  observe({
    procedure,
    protocol: call.protocol ?? "in-process",
    code: call.failure ? Code[call.failure.spec.code] : "OK",
    durationMs: performance.now() - call.startedAt,
    address: call.address,
  });
}

/** The call's record, put in the context by whoever accepted the request. */
export const callRecordKey = createContextKey<CallRecord | undefined>(undefined, {
  description: "RPC call record",
});

/** A Failure for a spec, with an optional message more precise than the spec's. */
export function failureFor(
  spec: ErrorSpec,
  message: string = spec.message,
  options: { cause?: unknown; retryAfterSeconds?: number; level?: FailureLevel } = {},
): Failure {
  return {
    spec,
    message,
    retryAfterSeconds: options.retryAfterSeconds,
    level: options.level ?? (spec.code === Code.Internal ? "error" : "debug"),
    cause: options.cause,
  };
}

/**
 * Normalises anything thrown in a call. HarmonyErrors keep their spec.
 * ConnectErrors come from the runtime or from the call's abort signal
 * (deadline, shutdown, client gone) and are mapped by code; a request that
 * the runtime could not read is the client's mistake whatever code it used.
 * Anything else is an unexpected failure: Internal, logged with its cause.
 */
export function failureOf(err: unknown, origin: FailureOrigin, streaming: boolean): Failure {
  if (err instanceof HarmonyError) {
    return failureFor(err.spec, err.message, {
      cause: err.cause,
      ...(err.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: err.retryAfterSeconds }),
    });
  }
  const badRequest = streaming ? hrpcErrors.badStreamingRequest : hrpcErrors.badUnaryRequest;
  if (err instanceof ConnectError) {
    switch (err.code) {
      case Code.Canceled:
        return failureFor(hrpcErrors.canceled, hrpcErrors.canceled.message, { cause: err });
      case Code.DeadlineExceeded:
        return failureFor(hrpcErrors.deadlineExceeded, hrpcErrors.deadlineExceeded.message, {
          cause: err,
        });
      case Code.Unavailable:
        return failureFor(hrpcErrors.unavailable, hrpcErrors.unavailable.message, { cause: err });
      case Code.ResourceExhausted:
        if (origin === "request") return failureFor(hrpcErrors.requestTooLarge);
        break;
    }
    if (origin === "request") {
      return failureFor(badRequest, `${badRequest.message}: ${err.rawMessage}`, { cause: err });
    }
  } else if (origin === "request") {
    // Reading the body failed for a reason of the transport (the client reset
    // the stream or went away): nobody is left to answer.
    return failureFor(hrpcErrors.canceled, hrpcErrors.canceled.message, { cause: err });
  }
  return failureFor(hrpcErrors.internal, hrpcErrors.internal.message, { cause: err });
}

/** The ConnectError a Failure is sent as: its code, message and `hrpc.v1.Error` detail. */
export function toConnectError(failure: Failure): ConnectError {
  const { spec, message, retryAfterSeconds } = failure;
  const details =
    retryAfterSeconds === undefined
      ? new Uint8Array()
      : toBinary(RetryInfoSchema, create(RetryInfoSchema, { retryAfter: retryAfterSeconds }));
  const metadata =
    retryAfterSeconds === undefined ? undefined : { "retry-after": String(retryAfterSeconds) };
  return new ConnectError(
    message,
    spec.code,
    metadata,
    [{ desc: ErrorSchema, value: { identifier: spec.identifier, humanMessage: message, details } }],
    failure.cause,
  );
}

/**
 * Records a call's failure and logs it at its level, once: the first failure
 * of a call is the one answered.
 */
export function recordFailure(
  log: Logger,
  call: CallRecord | undefined,
  failure: Failure,
  procedure: string,
): Failure {
  if (call?.failure !== undefined) return call.failure;
  if (call) call.failure = failure;
  const fields = { procedure, identifier: failure.spec.identifier, code: Code[failure.spec.code] };
  if (failure.level === "error") log.error({ ...fields, err: failure.cause }, "rpc failed");
  else if (failure.level === "warn") log.warn({ ...fields, err: failure.cause }, "rpc failed");
  else log.debug(fields, `rpc answered ${failure.spec.identifier}`);
  return failure;
}
