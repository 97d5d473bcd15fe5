import { create, getOption, hasOption, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import type { AuthenticatedSession, Sessions } from "../auth/sessions.js";
import {
  badRequestIdentifier,
  HarmonyError,
  hrpcErrors,
  identifierForCode,
  isUndecodableRequest,
} from "../errors.js";
import { ErrorSchema, RetryInfoSchema } from "../gen/hrpc/v1/hrpc_pb.js";
import { metadata } from "../gen/protocol/harmonytypes/v1/types_pb.js";

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
    const required = hasOption(req.method, metadata)
      ? getOption(req.method, metadata).requiresAuthentication
      : false;
    if (required) {
      const token = tokenFromAuthorization(req.header.get("authorization"));
      req.contextValues.set(sessionKey, await sessions.authenticate(token));
    }
    return next(req);
  };
}

/** The `hrpc.v1.Error` detail of a ConnectError, if it carries one. */
export function harmonyIdentifier(err: ConnectError): string | undefined {
  return err.findDetails(ErrorSchema)[0]?.identifier;
}

function withDetail(
  message: string,
  code: Code,
  identifier: string,
  retryAfterSeconds?: number,
  cause?: unknown,
): ConnectError {
  const details =
    retryAfterSeconds === undefined
      ? new Uint8Array()
      : toBinary(RetryInfoSchema, create(RetryInfoSchema, { retryAfter: retryAfterSeconds }));
  const metadata =
    retryAfterSeconds === undefined ? undefined : { "retry-after": String(retryAfterSeconds) };
  return new ConnectError(
    message,
    code,
    metadata,
    [{ desc: ErrorSchema, value: { identifier, humanMessage: message, details } }],
    cause,
  );
}

/**
 * Turns whatever a handler threw into a ConnectError carrying an
 * `hrpc.v1.Error` detail: HarmonyErrors keep their code and identifier,
 * ConnectErrors get the identifier for their code, and anything else is
 * logged with its cause and answered Internal without internals.
 */
export function toConnectError(
  err: unknown,
  log: Logger,
  procedure: string,
  streaming = false,
): ConnectError {
  if (err instanceof HarmonyError) {
    return withDetail(err.message, err.code, err.identifier, err.retryAfterSeconds, err);
  }
  if (err instanceof ConnectError) {
    if (harmonyIdentifier(err) !== undefined) return err;
    if (isUndecodableRequest(err)) {
      return withDetail(
        `the request message does not decode: ${err.rawMessage}`,
        Code.InvalidArgument,
        badRequestIdentifier(streaming),
      );
    }
    if (err.code === Code.Internal || err.code === Code.Unknown) {
      log.error({ err, procedure }, "rpc failed");
      return withDetail(hrpcErrors.internal.message, Code.Internal, hrpcErrors.internal.identifier);
    }
    return withDetail(err.rawMessage, err.code, identifierForCode(err.code), undefined, err);
  }
  log.error({ err, procedure }, "rpc failed");
  return withDetail(hrpcErrors.internal.message, Code.Internal, hrpcErrors.internal.identifier);
}

/** The outermost interceptor: every error leaves through {@link toConnectError}. */
export function errorInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const streaming = req.method.methodKind !== "unary";
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            throw toConnectError(err, log, procedure, streaming);
          }
        })(),
      };
    } catch (err) {
      throw toConnectError(err, log, procedure, streaming);
    }
  };
}
