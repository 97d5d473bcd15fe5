import { Code } from "@connectrpc/connect";

/**
 * A stable error: the Harmony identifier clients branch on, the Connect code,
 * a message a person can act on, and the HTTP status hRPC answers it with.
 * Each feature keeps a table of these.
 */
export interface ErrorSpec {
  readonly identifier: string;
  readonly code: Code;
  readonly message: string;
  /**
   * hRPC's HTTP status for this error. Unset means 400, as PROTOCOL.md §7
   * gives for application (`h.*`) errors; `hrpc.*` errors set their own.
   */
  readonly hrpcStatus?: number;
}

/** The HTTP status hRPC answers an error with. */
export function hrpcStatusOf(spec: ErrorSpec): number {
  return spec.hrpcStatus ?? 400;
}

/**
 * The error domain code throws. The RPC error boundary turns it into the
 * protocol's error with `spec.code` and an `hrpc.v1.Error` detail carrying
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
 * hRPC's own identifiers (PROTOCOL.md §7), used for errors of the transport
 * and for unexpected failures, where no application identifier fits.
 */
export const hrpcErrors = {
  internal: {
    identifier: "hrpc.internal-server-error",
    code: Code.Internal,
    message: "the server failed to handle this request; it has been logged, try again later",
    hrpcStatus: 500,
  },
  unavailable: {
    identifier: "hrpc.unavailable",
    code: Code.Unavailable,
    message: "the server is shutting down; reconnect and try again",
    hrpcStatus: 503,
  },
  resourceExhausted: {
    identifier: "hrpc.resource-exhausted",
    code: Code.ResourceExhausted,
    message: "too many requests; wait and try again",
    hrpcStatus: 429,
  },
  requestTooLarge: {
    identifier: "hrpc.resource-exhausted",
    code: Code.ResourceExhausted,
    message: "the request is larger than this server accepts (READ_MAX_BYTES)",
    hrpcStatus: 429,
  },
  notFound: {
    identifier: "hrpc.not-found",
    code: Code.NotFound,
    message: "there is no method at this path",
    hrpcStatus: 404,
  },
  notImplemented: {
    identifier: "hrpc.not-implemented",
    code: Code.Unimplemented,
    message: "this server does not implement that method",
    hrpcStatus: 501,
  },
  badUnaryRequest: {
    identifier: "hrpc.http.bad-unary-request",
    code: Code.InvalidArgument,
    message: "the request is malformed",
    hrpcStatus: 400,
  },
  badStreamingRequest: {
    identifier: "hrpc.http.bad-streaming-request",
    code: Code.InvalidArgument,
    message: "the streaming request is malformed",
    hrpcStatus: 400,
  },
  /** cadenza's own: the client's deadline passed before the call finished. */
  deadlineExceeded: {
    identifier: "hrpc.deadline-exceeded",
    code: Code.DeadlineExceeded,
    message: "the call took longer than the deadline the client set",
    hrpcStatus: 504,
  },
  /** cadenza's own: the client cancelled the call (it never sees this answer). */
  canceled: {
    identifier: "hrpc.canceled",
    code: Code.Canceled,
    message: "the call was cancelled by the client",
    hrpcStatus: 499,
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
    hrpcStatus: 503,
  },
} as const satisfies Record<string, ErrorSpec>;

/**
 * Why cadenza cannot start, as one line that names the setting and says what
 * to do. main and the CLI print the message alone, without a stack, and exit
 * with `exitCode`: 2 (the default) for something an operator must change
 * (a setting, a file, a taken port or data directory), 1 for a condition that
 * may pass by itself (the database is down or does not answer).
 */
export class StartupError extends Error {
  readonly exitCode: 1 | 2;

  constructor(message: string, options: { exitCode?: 1 | 2; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "StartupError";
    this.exitCode = options.exitCode ?? 2;
  }
}
