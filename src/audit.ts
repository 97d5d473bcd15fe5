import type { Logger } from "pino";
import type { Caller } from "./caller.js";
import type { Metrics } from "./metrics.js";

/**
 * Security events, one structured `info` line each, under `audit`: who (the
 * client address, the user ID where known, the flow's ID hash) and what, with
 * a reason category for refusals. Never a token, auth_id, password or key:
 * callers pass only the fields below, and the flow is named by the first
 * bytes of the SHA-256 the database keys it by.
 */
export type AuditEvent =
  | "login.succeeded"
  | "login.failed"
  | "login.throttled"
  | "registration.succeeded"
  | "registration.refused"
  | "limit.exceeded"
  | "federation.login.succeeded"
  | "federation.login.refused"
  | "federation.token.issued"
  | "key.rotated"
  | "password.reset"
  | "password.changed"
  | "account.deleted"
  | "admin.user.disabled"
  | "admin.user.enabled"
  | "admin.user.deleted"
  | "admin.user.renamed"
  | "admin.sessions.revoked"
  | "admin.invite.created"
  | "admin.invite.revoked"
  | "admin.totp.disabled"
  | "login.second_factor_required"
  | "recovery_code.used"
  | "totp.enrollment.begun"
  | "totp.enabled"
  | "totp.disabled"
  | "totp.refused"
  | "totp.recovery_codes.regenerated"
  | "passkey.registration.begun"
  | "passkey.added"
  | "passkey.removed"
  | "passkey.refused"
  | "admin.passkeys.removed";

export interface AuditFields {
  readonly caller?: Caller;
  readonly userId?: bigint;
  /** The flow's lookup key (SHA-256 of the auth_id). */
  readonly flowKey?: Buffer;
  /** A short category: `bad-credentials`, `already-registered`, `token-replayed`… */
  readonly reason?: string;
  readonly homeserver?: string;
  readonly keyId?: number;
  readonly limit?: string;
  /** How a login authenticated, when not by password: `passkey`. */
  readonly method?: string;
}

export interface Audit {
  record(event: AuditEvent, fields?: AuditFields): void;
}

/** What each audit event counts in the metrics. */
function count(metrics: Metrics, event: AuditEvent, fields: AuditFields): void {
  switch (event) {
    case "login.succeeded":
      metrics.login("success");
      break;
    case "login.failed":
      metrics.login(fields.reason === "disabled" ? "disabled" : "bad_credentials");
      break;
    case "login.throttled":
      metrics.limitExceeded("login");
      metrics.login("throttled");
      break;
    case "registration.succeeded":
      metrics.registration("success");
      break;
    case "registration.refused":
      metrics.registration("refused");
      break;
    case "limit.exceeded":
      metrics.limitExceeded(fields.limit ?? "unknown");
      break;
    case "federation.login.succeeded":
      metrics.federatedLogin("success");
      break;
    case "federation.login.refused":
      metrics.federatedLogin("refused");
      break;
  }
}

export function createAudit(logger: Logger, metrics?: Metrics): Audit {
  return {
    record(event, fields = {}) {
      if (metrics) count(metrics, event, fields);
      logger.info(
        {
          audit: event,
          ...(fields.caller ? { address: fields.caller.address } : {}),
          ...(fields.userId === undefined ? {} : { userId: fields.userId.toString() }),
          ...(fields.flowKey ? { flow: fields.flowKey.toString("hex").slice(0, 16) } : {}),
          ...(fields.reason ? { reason: fields.reason } : {}),
          ...(fields.homeserver ? { homeserver: fields.homeserver } : {}),
          ...(fields.keyId === undefined ? {} : { keyId: fields.keyId }),
          ...(fields.limit ? { limit: fields.limit } : {}),
          ...(fields.method ? { method: fields.method } : {}),
        },
        `audit: ${event}`,
      );
    },
  };
}
