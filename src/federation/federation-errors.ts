import { Code } from "@connectrpc/connect";
import type { ErrorSpec } from "../errors.js";

/**
 * Federation's errors. Identifiers are Harmony's (PROTOCOL.md §5) except
 * those marked as cadenza's own, which report checks other servers lack.
 */
export const federationErrors = {
  federationDisabled: {
    identifier: "h.federation-disabled",
    code: Code.PermissionDenied,
    message: "federation is disabled on this server",
    // scherzo answers its two federation-policy errors with 403.
    hrpcStatus: 403,
  },
  hostNotAllowed: {
    identifier: "h.host-not-allowed",
    code: Code.PermissionDenied,
    message: "federation with that server is not allowed",
    hrpcStatus: 403,
  },
  /** cadenza's own. */
  invalidServerId: {
    identifier: "h.invalid-server-id",
    code: Code.InvalidArgument,
    message: "server_id must be a server ID such as chat.example.org:2289",
  },
  /** cadenza's own: only a user's homeserver may vouch for them. */
  notLocalUser: {
    identifier: "h.not-local-user",
    code: Code.PermissionDenied,
    message: "only users of this homeserver can federate from it; ask your own homeserver",
  },
  badToken: {
    identifier: "h.bad-token",
    code: Code.InvalidArgument,
    message: "auth_token is missing; get one from Federate on your homeserver",
  },
  badTokenSignature: {
    identifier: "h.bad-token-signature",
    code: Code.InvalidArgument,
    message: "the token's signature must be 64 bytes (Ed25519)",
  },
  tokenVerifyFailure: {
    identifier: "h.token-verify-failure",
    code: Code.Unauthenticated,
    message: "the token's signature does not verify against the homeserver's key",
  },
  badTokenData: {
    identifier: "h.bad-token-data",
    code: Code.InvalidArgument,
    message: "the token's data is not a valid TokenData",
  },
  /** cadenza's own. */
  badTokenAudience: {
    identifier: "h.bad-token-audience",
    code: Code.Unauthenticated,
    message: "this token was issued for another server",
  },
  /** cadenza's own. */
  tokenExpired: {
    identifier: "h.token-expired",
    code: Code.Unauthenticated,
    message: "this token has expired; get a new one from Federate on your homeserver",
  },
  /** cadenza's own. */
  tokenReplayed: {
    identifier: "h.token-replayed",
    code: Code.Unauthenticated,
    message: "this token was already used; get a new one from Federate on your homeserver",
  },
  /**
   * One message for every way of failing to reach a homeserver (see
   * remote-keys.ts): LoginFederated is unauthenticated, and telling failures
   * apart would tell anyone what a name resolves to and which ports answer.
   */
  homeserverUnavailable: {
    identifier: "hrpc.unavailable",
    code: Code.Unavailable,
    message: "the homeserver could not be reached; try again later",
    hrpcStatus: 503,
  },
} as const satisfies Record<string, ErrorSpec>;
