import { type DescMethod, getOption, hasOption } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import type { Logger } from "pino";
import type { AuthenticatedSession, Sessions } from "../../auth/sessions.js";
import { HarmonyError, hrpcErrors } from "../../errors.js";
import { metadata } from "../../gen/protocol/harmonytypes/v1/types_pb.js";
import {
  type CallObserver,
  callRecordKey,
  failureOf,
  observeCall,
  recordFailure,
  toConnectError,
} from "./failure.js";

/** The caller's session, set by {@link authInterceptor} on methods that require one. */
export const sessionKey = createContextKey<AuthenticatedSession | undefined>(undefined, {
  description: "authenticated session",
});

/**
 * The session token from an Authorization header: Harmony clients send the raw
 * token; `Bearer <token>` is accepted too.
 */
export function tokenFromAuthorization(value: string | null): string | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  const bearer = /^Bearer\s+(.+)$/i.exec(trimmed);
  return bearer ? bearer[1] : trimmed;
}

/**
 * Authenticates calls to methods whose Harmony metadata option says
 * `requires_authentication`, and puts the session in the context. Reading the
 * option (not a list of method names) keeps the rule next to the method.
 */
export function authInterceptor(sessions: Pick<Sessions, "authenticate">): Interceptor {
  return (next) => async (req) => {
    const session = await sessionFor(sessions, req.method, req.header);
    if (session) req.contextValues.set(sessionKey, session);
    return next(req);
  };
}

/**
 * The session a call to `method` runs with: authenticated from its
 * Authorization header when the method's Harmony option requires it
 * (throwing `h.blank-session` when it does not check out), else none. The
 * auth interceptor and the direct stream path (direct-stream.ts) both decide
 * with this.
 */
export async function sessionFor(
  sessions: Pick<Sessions, "authenticate">,
  method: DescMethod,
  header: Pick<Headers, "get">,
): Promise<AuthenticatedSession | undefined> {
  if (!requiresAuthentication(method)) return undefined;
  return sessions.authenticate(tokenFromAuthorization(header.get("authorization")));
}

// Reading an extension decodes it from the method's options each time (~5 µs):
// once per method is enough, the descriptors never change.
const requires = new WeakMap<DescMethod, boolean>();
function requiresAuthentication(method: DescMethod): boolean {
  let required = requires.get(method);
  if (required === undefined) {
    required = hasOption(method, metadata) && getOption(method, metadata).requiresAuthentication;
    requires.set(method, required);
  }
  return required;
}

/** The one request message of a server-streaming call, read here so its errors are the client's. */
async function single<T>(messages: AsyncIterable<T>): Promise<T> {
  const it = messages[Symbol.asyncIterator]();
  const first = await it.next();
  const extra = first.done ? first : await it.next();
  if (first.done || !extra.done) {
    throw new HarmonyError(hrpcErrors.badStreamingRequest, {
      message: "a server-streaming call takes exactly one request message",
    });
  }
  return first.value;
}

/**
 * Why a call's signal was aborted, when it was: its deadline, the server's
 * shutdown (both ConnectErrors or HarmonyErrors), or else the client going
 * away. Whatever a handler throws after that is only a consequence.
 */
export function abortedBy(signal: AbortSignal): unknown {
  if (!signal.aborted) return undefined;
  const reason: unknown = signal.reason;
  if (reason instanceof ConnectError || reason instanceof HarmonyError) return reason;
  return clientWentAway();
}

/** What a call ends with when its client goes away (logged at debug, as `hrpc.canceled`). */
export function clientWentAway(): ConnectError {
  return new ConnectError("the client went away", Code.Canceled);
}

/**
 * The outermost interceptor: everything a handler throws, and everything that
 * goes wrong reading a streaming request's message, leaves through the
 * boundary's normaliser (failure.ts), is recorded on the call and logged once.
 */
export function errorInterceptor(log: Logger, observe?: CallObserver): Interceptor {
  return (next) => async (req) => {
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const streaming = req.method.methodKind !== "unary";
    const call = req.contextValues.get(callRecordKey);
    const ended = () => observeCall(observe, call, procedure);
    const fail = (err: unknown, origin: "request" | "handler") => {
      const failure = failureOf(abortedBy(req.signal) ?? err, origin, streaming);
      return toConnectError(recordFailure(log, call, failure, procedure));
    };
    let admitted = req;
    if (req.stream) {
      try {
        admitted = { ...req, message: createAsyncIterable([await single(req.message)]) };
      } catch (err) {
        const failed = fail(err, "request");
        ended();
        throw failed;
      }
    }
    try {
      const res = await next(admitted);
      if (!res.stream) {
        ended();
        return res;
      }
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            throw fail(err, "handler");
          } finally {
            ended();
          }
        })(),
      };
    } catch (err) {
      const failed = fail(err, "handler");
      ended();
      throw failed;
    }
  };
}
