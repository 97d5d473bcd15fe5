import { Code, type ConnectError } from "@connectrpc/connect";

/**
 * A stable error: the Harmony identifier clients branch on, the Connect code,
 * and a message a person can act on. Each feature keeps a table of these.
 */
export interface ErrorSpec {
  readonly identifier: string;
  readonly code: Code;
  readonly message: string;
}

/**
 * The error domain code throws. The error interceptor turns it into a
 * ConnectError with `spec.code` and an `hrpc.v1.Error` detail carrying
 * `spec.identifier`, so every protocol can report the identifier.
 */
export class HarmonyError extends Error {
  readonly spec: ErrorSpec;
  /** Seconds a client should wait before retrying, for rate limits. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    spec: ErrorSpec,
    options: { message?: string; cause?: unknown; retryAfterSeconds?: number } = {},
  ) {
    super(options.message ?? spec.message, { cause: options.cause });
    this.name = "HarmonyError";
    this.spec = spec;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  get identifier(): string {
    return this.spec.identifier;
  }

  get code(): Code {
    return this.spec.code;
  }
}

/**
 * hRPC's own identifiers, used where no application identifier fits (errors
 * raised by the transport, and unexpected failures).
 */
export const hrpcErrors = {
  internal: {
    identifier: "hrpc.internal-server-error",
    code: Code.Internal,
    message: "the server failed to handle this request; it has been logged, try again later",
  },
  unavailable: {
    identifier: "hrpc.unavailable",
    code: Code.Unavailable,
    message: "the server is shutting down; reconnect and try again",
  },
  /**
   * The database could not be reached, or did not answer in time. Thrown by
   * the db layer (src/db/connection-failure.ts) with the driver's error as
   * `cause`, which is never sent: it may name hosts and users.
   */
  databaseUnavailable: {
    identifier: "hrpc.unavailable",
    code: Code.Unavailable,
    message: "the server cannot reach its database right now; try again in a few seconds",
  },
} as const satisfies Record<string, ErrorSpec>;

/**
 * Whether connect-es rejected a request message that does not decode. It
 * reports that as Internal ("parse binary: …"), but it is the client's mistake.
 */
export function isUndecodableRequest(err: ConnectError): boolean {
  return err.code === Code.Internal && err.rawMessage.startsWith("parse binary");
}

/** hRPC's identifier for a malformed request, unary or streaming. */
export function badRequestIdentifier(streaming: boolean): string {
  return streaming ? "hrpc.http.bad-streaming-request" : "hrpc.http.bad-unary-request";
}

/**
 * The hRPC identifier for a Connect code, for errors that arrive without one
 * (those raised by the Connect runtime itself, such as an undecodable body).
 */
export function identifierForCode(code: Code): string {
  switch (code) {
    case Code.ResourceExhausted:
      return "hrpc.resource-exhausted";
    case Code.NotFound:
      return "hrpc.not-found";
    case Code.Unimplemented:
      return "hrpc.not-implemented";
    case Code.Unavailable:
      return "hrpc.unavailable";
    case Code.InvalidArgument:
    case Code.OutOfRange:
    case Code.FailedPrecondition:
      return "hrpc.http.bad-unary-request";
    default:
      return "hrpc.internal-server-error";
  }
}

/**
 * A condition an operator must fix before cadenza can start (a wrong key, a
 * bad setting). main prints its message alone, without a stack.
 */
export class StartupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "StartupError";
  }
}
