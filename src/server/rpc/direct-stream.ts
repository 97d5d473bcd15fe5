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
) => () => void;

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
   * Returns what the transport calls when the client goes away.
   */
  serve<O>(
    call: DirectCall,
    implementation: DirectImplementation<O>,
    sink: DirectSink<O>,
  ): () => void;
  /** Calls open now. */
  readonly open: number;
}

/** setTimeout's limit. */
const MAX_WAIT_MS = 2 ** 31 - 1;

export function createDirectStreams(options: DirectStreamOptions): DirectStreams {
  const { logger, sessions, shutdownSignal, observe } = options;
  /** How to end each open call, for shutdown. */
  const open = new Set<(reason: unknown) => void>();
  shutdownSignal.addEventListener(
    "abort",
    () => {
      for (const end of [...open]) end(shutdownSignal.reason);
    },
    { once: true },
  );

  return {
    serve(call, implementation, sink) {
      const procedure = `${call.method.parent.typeName}/${call.method.name}`;
      let ended = false;
      let stop: (() => void) | undefined;
      let timer: NodeJS.Timeout | undefined;

      /** The call's one end: the first reason wins, as the pipeline's abort signal decides. */
      const finish = (error?: unknown): void => {
        if (ended) return;
        ended = true;
        open.delete(finish);
        clearTimeout(timer);
        stop?.();
        const failure =
          error === undefined
            ? undefined
            : recordFailure(logger, call.record, failureOf(error, "handler", true), procedure);
        sink.end(failure);
        observeCall(observe, call.record, procedure);
      };

      if (shutdownSignal.aborted) {
        finish(shutdownSignal.reason);
        return () => {};
      }
      open.add(finish);
      if (call.deadline !== undefined) {
        const waitMs = Math.max(0, Math.min(call.deadline - performance.now(), MAX_WAIT_MS));
        // What Connect's handler context aborts with when the deadline passes.
        timer = setTimeout(
          () => finish(new ConnectError("the operation timed out", Code.DeadlineExceeded)),
          waitMs,
        );
      }
      sessionFor(sessions, call.method, call.header).then(
        (session) => {
          if (ended) return;
          try {
            stop = implementation(session, {
              message: (message) => {
                if (!ended) sink.message(message);
              },
              end: (error) => finish(error),
            });
          } catch (err) {
            finish(err);
          }
          // Ended while it started (synchronously): stop it now.
          if (ended) stop?.();
        },
        (err: unknown) => finish(err),
      );
      return () => finish(clientWentAway());
    },
    get open() {
      return open.size;
    },
  };
}
