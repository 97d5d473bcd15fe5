import { Code } from "@connectrpc/connect";
import type { Audit } from "../audit.js";
import type { Clock } from "../clock.js";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";
import { randomToken, sha256 } from "./random-ids.js";

/**
 * Invites for REGISTRATION=invite: created, listed and revoked by operators
 * (admin API, CLI), each allowing a number of registrations until it
 * expires. The code is 128 random bits, stored only as its SHA-256, and a
 * use is consumed atomically with the registration it admits.
 */

export interface Invite {
  readonly inviteId: string;
  readonly note: string;
  readonly maxUses: number;
  readonly uses: number;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly revokedAt: number | undefined;
}

export interface InviteStore {
  insert(
    q: Queryable,
    invite: {
      codeHash: Buffer;
      note: string;
      maxUses: number;
      createdAt: number;
      expiresAt: number;
    },
  ): Promise<Invite>;
  list(q: Queryable, includeInactive: boolean, now: number): Promise<Invite[]>;
  revoke(q: Queryable, inviteId: string, now: number): Promise<Invite | undefined>;
  /** Whether a live invite has this code. */
  live(q: Queryable, codeHash: Buffer, now: number): Promise<boolean>;
  /** Uses one registration of a live invite, in the caller's transaction; false when none is left. */
  consume(q: Queryable, codeHash: Buffer, now: number): Promise<boolean>;
}

export const inviteErrors = {
  /** Harmony's own identifier for a bad registration token (PROTOCOL.md §5). */
  invalidInvite: {
    identifier: "h.invalid-registration-token",
    code: Code.PermissionDenied,
    message: "this invite is not valid: it is unknown, used up, expired or revoked",
  },
  /** cadenza's own. */
  unknownInvite: {
    identifier: "h.unknown-invite",
    code: Code.NotFound,
    message: "there is no invite with that ID",
  },
  /** cadenza's own. */
  badInvite: {
    identifier: "h.bad-invite",
    code: Code.InvalidArgument,
    message: "an invite allows 1 to 100,000 registrations, for 1 minute to 365 days",
  },
} as const satisfies Record<string, ErrorSpec>;

const DEFAULT_VALID_MS = 7 * 86_400_000;
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface Invites {
  create(options: {
    maxUses?: number;
    validForMs?: number;
    note?: string;
  }): Promise<{ invite: Invite; code: string }>;
  list(includeInactive: boolean): Promise<Invite[]>;
  revoke(inviteId: string): Promise<Invite>;
  /** Throws h.invalid-registration-token unless `code` names a live invite (nothing is spent). */
  check(code: string): Promise<void>;
  /** Consumes one use of `code` in the registration's transaction, or throws h.invalid-registration-token. */
  consume(q: Queryable, code: string): Promise<void>;
}

export function createInvites(deps: {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: InviteStore;
  readonly audit: Audit;
}): Invites {
  const { db, clock, store, audit } = deps;
  return {
    async create({ maxUses = 1, validForMs = DEFAULT_VALID_MS, note = "" }) {
      if (
        !Number.isInteger(maxUses) ||
        maxUses < 1 ||
        maxUses > 100_000 ||
        validForMs < 60_000 ||
        validForMs > 365 * 86_400_000
      ) {
        throw new HarmonyError(inviteErrors.badInvite);
      }
      const code = randomToken(16);
      const now = clock.now();
      const invite = await store.insert(db, {
        codeHash: sha256(code),
        note: note.slice(0, 200),
        maxUses,
        createdAt: now,
        expiresAt: now + validForMs,
      });
      audit.record("admin.invite.created", {});
      return { invite, code };
    },
    list: (includeInactive) => store.list(db, includeInactive, clock.now()),
    async revoke(inviteId) {
      if (!uuidPattern.test(inviteId)) throw new HarmonyError(inviteErrors.unknownInvite);
      const invite = await store.revoke(db, inviteId, clock.now());
      if (!invite) throw new HarmonyError(inviteErrors.unknownInvite);
      audit.record("admin.invite.revoked", {});
      return invite;
    },
    async check(code) {
      if (code.trim() === "" || !(await store.live(db, sha256(code.trim()), clock.now()))) {
        throw new HarmonyError(inviteErrors.invalidInvite);
      }
    },
    async consume(q, code) {
      if (code.trim() === "" || !(await store.consume(q, sha256(code.trim()), clock.now()))) {
        throw new HarmonyError(inviteErrors.invalidInvite);
      }
    },
  };
}
