import type { DescMethod, Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import type { AuthenticatedSession, Sessions } from "../../auth/sessions.js";
import type { Caller } from "../../caller.js";
import {
  type CallObserver,
  type CallRecord,
  type Failure,
  failureOf,
  observeCall,
  recordFailure,
} from "./failure.js";
import { clientWentAway, sessionFor } from "./interceptors.js";

/**
 * Server-streaming calls served outside Connect's per-call pipeline. A call
 * waiting in that pipeline holds dozens of generators, closures, promises and
 * abort listeners (about 50 KB of a StreamSteps call's 60–70 KB, issue 14);
 * one here holds a record in a set, a timer when it has a deadline, and its
 * implementation's own state.
 *
 * This is the one function through which such a call gets what the
 * interceptors give every call in the pipeline, decided by the same code:
 * the session rule of the method's Harmony option ({@link sessionFor}); the
 * error boundary (failure.ts: every error normalised, recorded and logged
 * once, the first one answered); the deadline the client set (the same
 * `DeadlineExceeded` Connect's handler aborts with); the end on shutdown
 * (the server's shutdown reason, `hrpc.unavailable`); a client that went
 * away (`hrpc.canceled`, at debug); and the call's end observed (the log
 * line and the duration histogram). Limits and the open-streams gauge are
 * the implementation's, shared with the pipeline's handler (step-stream.ts).
 * Each transport (direct-http.ts for Connect, gRPC and gRPC-Web; hRPC's
 * WebSocket) only reads the request and writes what it is given.
 */

export interface DirectStreamOptions {
  readonly logger: Logger;
  readonly sessions: Pick<Sessions, "authenticate">;
  /** Aborted (with the reason calls end with) when the server shuts down. */
  readonly shutdownSignal: AbortSignal;
  readonly observe?: CallObserver | undefined;
}

/** One admitted call, its request message read. */
export interface DirectCall {
  readonly method: DescMethod;
  /** The call's record: protocol, client address, start; its failure once there is one. */
  readonly record: CallRecord;
  /** The request headers the rules read (Authorization). */
  readonly header: Pick<Headers, "get">;
  /** When the client's deadline passes (performance.now()), if it set one. */
  readonly deadline: number | undefined;
}

/** What the implementation is given to answer with. */
export interface DirectOutput<O> {
  message(message: O): void;
  /** The stream is over: complete (no error), or failed with `error`. At most once. */
  end(error?: unknown): void;
}

/**
 * A server-streaming implementation as a callback: starts the stream and
 * returns how to stop it (after which it says nothing more). It may throw
 * instead of starting (a limit), as a handler would.
 */
export type DirectImplementation<O> = (
  session: AuthenticatedSession | undefined,
  out: DirectOutput<O>,
) => { stop(): void };

/** Who a direct call is for, as its implementation needs to know. */
export interface DirectCallContext {
  readonly caller: Caller;
  /** connect, grpc, grpc-web or hrpc. */
  readonly protocol: string;
  /** An hRPC WebSocket holds one of the caller's stream slots already. */
  readonly slotHeld: boolean;
}

/** A method served on the direct path: its implementation for one decoded request. */
export interface DirectMethod {
  start(request: Message, call: DirectCallContext): DirectImplementation<Message>;
}

/** Where the transport writes the call: its messages, then its end. */
export interface DirectSink<O> {
  message(message: O): void;
  /** Once: complete (undefined), or the Failure to answer with. */
  end(failure: Failure | undefined): void;
}

export interface DirectStreams {
  /**
   * Runs `call`: the rules, then `implementation`, its messages to `sink`.
   * Returns the call, whose `cancel` the transport calls when the client goes away.
   */
  serve<O>(
    call: DirectCall,
    implementation: DirectImplementation<O>,
    sink: DirectSink<O>,
  ): { cancel(): void };
  /** Calls open now. */
  readonly open: number;
}

/** setTimeout's limit. */
const MAX_WAIT_MS = 2 ** 31 - 1;

/** `package.Service/Method`, for logs and metrics, made once per method. */
const procedures = new WeakMap<DescMethod, string>();
const procedureOf = (method: DescMethod): string => {
  let procedure = procedures.get(method);
  if (procedure === undefined) {
    procedure = `${method.parent.typeName}/${method.name}`;
    procedures.set(method, procedure);
  }
  return procedure;
};

/**
 * One call in flight. A class rather than closures: 10,000 open streams are
 * 10,000 of these, each one object (its record, its sink, what stops its
 * implementation, its deadline timer) with the methods on the prototype.
 */
class Call<O> implements DirectOutput<O> {
  ended = false;
  stream: { stop(): void } | undefined;
  timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly rules: Rules,
    private readonly method: DescMethod,
    private readonly record: CallRecord,
    private readonly sink: DirectSink<O>,
  ) {}

  message(message: O): void {
    if (!this.ended) this.sink.message(message);
  }

  /** The call's one end: the first reason wins, as the pipeline's abort signal decides. */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.rules.open.delete(this);
    clearTimeout(this.timer);
    this.stream?.stop();
    const { logger, observe } = this.rules.options;
    const procedure = procedureOf(this.method);
    const failure =
      error === undefined
        ? undefined
        : recordFailure(logger, this.record, failureOf(error, "handler", true), procedure);
    this.sink.end(failure);
    observeCall(observe, this.record, procedure);
  }

  cancel(): void {
    if (!this.ended) this.end(clientWentAway());
  }

  start(session: AuthenticatedSession | undefined, implementation: DirectImplementation<O>): void {
    if (this.ended) return;
    try {
      this.stream = implementation(session, this);
    } catch (err) {
      this.end(err);
    }
    // Ended while it started (synchronously): stop it now.
    if (this.ended) this.stream?.stop();
  }
}

interface Rules {
  readonly options: DirectStreamOptions;
  /** Every open call, to end on shutdown. */
  readonly open: Set<Call<unknown>>;
}

function deadlinePassed(call: Call<unknown>): void {
  // What Connect's handler context aborts with when the deadline passes.
  call.end(new ConnectError("the operation timed out", Code.DeadlineExceeded));
}

export function createDirectStreams(options: DirectStreamOptions): DirectStreams {
  const { sessions, shutdownSignal } = options;
  const rules: Rules = { options, open: new Set() };
  shutdownSignal.addEventListener(
    "abort",
    () => {
      for (const call of [...rules.open]) call.end(shutdownSignal.reason);
    },
    { once: true },
  );

  return {
    serve(direct, implementation, sink) {
      const call = new Call(rules, direct.method, direct.record, sink);
      if (shutdownSignal.aborted) {
        call.end(shutdownSignal.reason);
        return call;
      }
      rules.open.add(call as Call<unknown>);
      if (direct.deadline !== undefined) {
        const waitMs = Math.max(0, Math.min(direct.deadline - performance.now(), MAX_WAIT_MS));
        call.timer = setTimeout(deadlinePassed, waitMs, call);
      }
      sessionFor(sessions, direct.method, direct.header).then(
        (session) => call.start(session, implementation),
        (err: unknown) => call.end(err),
      );
      return call;
    },
    get open() {
      return rules.open.size;
    },
  };
}
