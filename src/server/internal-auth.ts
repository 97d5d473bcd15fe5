import { createHash, timingSafeEqual } from "node:crypto";
import { Code, type Interceptor } from "@connectrpc/connect";
import { type ErrorSpec, HarmonyError } from "../errors.js";

export const internalErrors = {
  /** cadenza's own. */
  badInternalToken: {
    identifier: "h.bad-internal-token",
    code: Code.Unauthenticated,
    message:
      "this is cadenza's internal API: send Authorization: Bearer <INTERNAL_TOKEN>, the token this server was started with",
  },
} as const satisfies Record<string, ErrorSpec>;

const digest = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest();

/**
 * Whether an Authorization header carries `Bearer <token>`. Both sides are
 * hashed first, so the comparison takes the same time whatever the header's
 * length, and then compared in constant time.
 */
export function bearerMatches(authorization: string | null | undefined, token: string): boolean {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
  return timingSafeEqual(digest(match?.[1] ?? ""), digest(token)) && match !== null;
}

/**
 * Every call on the internal port needs `Authorization: Bearer
 * <INTERNAL_TOKEN>` when a token is configured; without one (loopback only,
 * which the configuration enforces) every call is let through.
 */
export function internalAuthInterceptor(token: string | undefined): Interceptor {
  return (next) => async (req) => {
    if (token !== undefined && !bearerMatches(req.header.get("authorization"), token)) {
      throw new HarmonyError(internalErrors.badInternalToken);
    }
    return next(req);
  };
}
