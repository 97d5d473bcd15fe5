import { fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { adminErrors } from "../src/auth/account-admin.js";
import { authErrors } from "../src/auth/auth-errors.js";
import { codeErrors } from "../src/auth/email-codes.js";
import { inviteErrors } from "../src/auth/invites.js";
import { passkeyErrors } from "../src/auth/passkeys.js";
import { secondFactorErrors } from "../src/auth/second-factor.js";
import { type ErrorSpec, hrpcErrors } from "../src/errors.js";
import { accountEventErrors } from "../src/events/account-events.js";
import { federationErrors } from "../src/federation/federation-errors.js";
import { ErrorSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import { directoryErrors } from "../src/homeserver/user-directory.js";
import { limitErrors } from "../src/limits/limit-errors.js";
import { hrpcErrorResponse } from "../src/server/hrpc/errors.js";
import { internalErrors } from "../src/server/internal-auth.js";

/**
 * The HTTP status hRPC answers each of cadenza's errors with, against the
 * hRPC spec's own words rather than cadenza's code: PROTOCOL.md §7, "`hrpc.*`
 * identifiers map to statuses: internal-server-error 500, resource-exhausted
 * 429, not-found 404, not-implemented 501, unavailable 503,
 * http.bad-unary-request 400, http.bad-streaming-request 400; application
 * (`h.*`) errors are 400 (scherzo uses 403 for the two federation-policy
 * ones)".
 */
const spec: Record<string, number> = {
  "hrpc.internal-server-error": 500,
  "hrpc.resource-exhausted": 429,
  "hrpc.not-found": 404,
  "hrpc.not-implemented": 501,
  "hrpc.unavailable": 503,
  "hrpc.http.bad-unary-request": 400,
  "hrpc.http.bad-streaming-request": 400,
};
/** cadenza's own `hrpc.*` identifiers, with the statuses the README's error table gives. */
const cadenzaOwn: Record<string, number> = {
  "hrpc.deadline-exceeded": 504,
  "hrpc.canceled": 499,
};
/** The two federation-policy errors, 403 as scherzo answers them. */
const federationPolicy = new Set(["h.federation-disabled", "h.host-not-allowed"]);

function expectedStatus(identifier: string): number | undefined {
  if (identifier.startsWith("hrpc.")) return spec[identifier] ?? cadenzaOwn[identifier];
  return federationPolicy.has(identifier) ? 403 : 400;
}

const tables: Record<string, Record<string, ErrorSpec>> = {
  hrpcErrors,
  authErrors,
  federationErrors,
  limitErrors,
  codeErrors,
  adminErrors,
  secondFactorErrors,
  inviteErrors,
  passkeyErrors,
  accountEventErrors,
  directoryErrors,
  internalErrors,
};
const every = Object.entries(tables).flatMap(([table, specs]) =>
  Object.entries(specs).map(([name, s]) => [`${table}.${name}`, s] as const),
);

describe("hRPC's HTTP status for every error", () => {
  it.each(every)("%s", (_, s) => {
    const { status, body } = hrpcErrorResponse({
      spec: s,
      message: s.message,
      retryAfterSeconds: undefined,
      level: "debug",
      cause: undefined,
    });
    expect(status).toBe(expectedStatus(s.identifier));
    expect(fromBinary(ErrorSchema, body).identifier).toBe(s.identifier);
  });

  it("covers every hrpc.* identifier the spec gives a status, and the two policy errors", () => {
    const used = new Set(every.map(([, s]) => s.identifier));
    expect([...Object.keys(spec), ...federationPolicy].filter((i) => !used.has(i))).toEqual([]);
  });
});
