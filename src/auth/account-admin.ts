import { Code } from "@connectrpc/connect";
import type { Audit } from "../audit.js";
import type { Clock } from "../clock.js";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";
import type { AccountEvents } from "../events/account-events.js";
import { validateUsername } from "./account-rules.js";
import { authErrors } from "./auth-errors.js";
import type { SecondFactorStore } from "./second-factor.js";
import type { Sessions } from "./sessions.js";

/**
 * What operators (the admin API) and users themselves (the account service)
 * do to accounts beyond logging in: disable, enable, delete, rename, turn a
 * second factor off, and see and end sessions. Each change is written with its account event in one
 * transaction, and audited.
 */

export interface AdminUser {
  readonly userId: bigint;
  readonly username: string;
  /** Empty for a federated user. */
  readonly email: string;
  /** Empty for a local user. */
  readonly homeserver: string;
  readonly foreignUserId: bigint;
  readonly createdAt: number;
  readonly disabledAt: number | undefined;
  readonly sessionCount: number;
  /** Whether logins ask for a TOTP code after the password. */
  readonly totpEnabled: boolean;
  /** How many passkeys the user has. */
  readonly passkeyCount: number;
}

export interface SessionInfo {
  readonly sessionId: string;
  readonly createdAt: number;
  readonly lastUsedAt: number;
  /** The earlier of the absolute and the idle end. */
  readonly expiresAt: number;
  readonly clientAddress: string;
  readonly userAgent: string;
}

export interface AccountAdminStore {
  /** Users by ID after `afterId`, whose username or email contains `query`; at most `limit`. */
  list(q: Queryable, query: string, afterId: bigint, limit: number): Promise<AdminUser[]>;
  find(
    q: Queryable,
    by: { userId: bigint } | { usernameKey: string },
  ): Promise<AdminUser | undefined>;
  /** Sets or clears disabled_at; false when no such user or nothing changed. */
  setDisabled(q: Queryable, userId: bigint, at: number | undefined): Promise<boolean>;
  /** Deletes a user (sessions go with it); false when there was none. */
  delete(q: Queryable, userId: bigint): Promise<boolean>;
  /**
   * Renames a local user; "taken" when another has the name, undefined when
   * there is no such local user, else the previous name.
   */
  rename(
    q: Queryable,
    userId: bigint,
    username: string,
    usernameKey: string,
  ): Promise<{ previous: string } | "taken" | "not-local" | undefined>;
  /** A user's sessions, newest first, with their absolute end. */
  sessions(
    q: Queryable,
    userId: bigint,
  ): Promise<(Omit<SessionInfo, "expiresAt"> & { absoluteExpiresAt: number })[]>;
  /** Deletes the user's sessions with these IDs (all when undefined); returns the IDs deleted. */
  deleteSessions(
    q: Queryable,
    userId: bigint,
    ids: readonly string[] | undefined,
    keep?: string,
  ): Promise<string[]>;
}

export const adminErrors = {
  /** cadenza's own. */
  unknownUser: {
    identifier: "h.unknown-user",
    code: Code.NotFound,
    message: "there is no user with that ID or username",
  },
  /** cadenza's own. */
  notLocal: {
    identifier: "h.not-local-user",
    code: Code.FailedPrecondition,
    message: "this user belongs to another homeserver, which decides their name",
  },
  /** cadenza's own. */
  badSessionId: {
    identifier: "h.bad-session-id",
    code: Code.InvalidArgument,
    message: "session IDs are UUIDs, as ListSessions answers them",
  },
} as const satisfies Record<string, ErrorSpec>;

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface AccountAdmin {
  list(
    query: string,
    pageSize: number,
    pageToken: string,
  ): Promise<{ users: AdminUser[]; nextPageToken: string }>;
  get(by: { userId: bigint } | { username: string }): Promise<AdminUser>;
  disable(userId: bigint): Promise<AdminUser>;
  enable(userId: bigint): Promise<AdminUser>;
  delete(userId: bigint): Promise<void>;
  rename(userId: bigint, username: string): Promise<AdminUser>;
  /**
   * Turns the user's TOTP off and deletes their recovery codes (for a user
   * who lost both); emits `second_factor_changed` when it was on.
   */
  disableTotp(userId: bigint): Promise<AdminUser>;
  sessions(userId: bigint): Promise<SessionInfo[]>;
  /** Ends the listed sessions of a user (all when `ids` is undefined); returns the IDs that ended. */
  revokeSessions(
    userId: bigint,
    ids: readonly string[] | undefined,
    keep?: string,
  ): Promise<string[]>;
}

export type AccountAdminDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: AccountAdminStore;
  readonly events: Pick<AccountEvents, "record">;
  readonly audit: Audit;
  readonly sessions: Pick<Sessions, "evict">;
  readonly secondFactorStore: Pick<SecondFactorStore, "remove">;
  readonly sessionIdleTtlMs: number;
};

export function createAccountAdmin(deps: AccountAdminDeps): AccountAdmin {
  const { db, clock, store, events, audit, sessions } = deps;
  const unknown = (): never => {
    throw new HarmonyError(adminErrors.unknownUser);
  };
  const get = async (q: Queryable, userId: bigint): Promise<AdminUser> =>
    (await store.find(q, { userId })) ?? unknown();

  return {
    async list(query, pageSize, pageToken) {
      const size = Math.min(Math.max(pageSize || 50, 1), 500);
      const after = /^\d{1,20}$/.test(pageToken) ? BigInt(pageToken) : 0n;
      const users = await store.list(db, query.trim(), after, size + 1);
      const page = users.slice(0, size);
      const last = page.at(-1);
      return { users: page, nextPageToken: users.length > size && last ? String(last.userId) : "" };
    },

    async get(by) {
      if ("userId" in by) return get(db, by.userId);
      // Looked up by the key uniqueness uses, so any spelling of the name finds it.
      const key = validateUsername(by.username).key;
      return (await store.find(db, { usernameKey: key })) ?? unknown();
    },

    async disable(userId) {
      const user = await db.transaction(async (tx) => {
        if (await store.setDisabled(tx, userId, clock.now())) {
          await events.record(tx, userId, { kind: "disabled" });
          audit.record("admin.user.disabled", { userId });
        }
        return get(tx, userId);
      });
      sessions.evict({ userId });
      return user;
    },

    async enable(userId) {
      return db.transaction(async (tx) => {
        if (await store.setDisabled(tx, userId, undefined)) {
          await events.record(tx, userId, { kind: "enabled" });
          audit.record("admin.user.enabled", { userId });
        }
        return get(tx, userId);
      });
    },

    async delete(userId) {
      await db.transaction(async (tx) => {
        if (!(await store.delete(tx, userId))) unknown();
        await events.record(tx, userId, { kind: "deleted" });
      });
      sessions.evict({ userId });
      audit.record("admin.user.deleted", { userId });
    },

    async rename(userId, username) {
      const valid = validateUsername(username);
      return db
        .transaction(async (tx) => {
          const renamed = (await store.rename(tx, userId, valid.username, valid.key)) ?? unknown();
          if (renamed === "not-local") throw new HarmonyError(adminErrors.notLocal);
          if (renamed === "taken") {
            throw new HarmonyError(authErrors.alreadyRegistered, {
              message: "this username is taken; choose another",
            });
          }
          if (renamed.previous !== valid.username) {
            await events.record(tx, userId, {
              kind: "username_changed",
              oldUsername: renamed.previous,
              username: valid.username,
            });
            audit.record("admin.user.renamed", { userId });
          }
          return get(tx, userId);
        })
        .finally(() => sessions.evict({ userId }));
    },

    async disableTotp(userId) {
      return db.transaction(async (tx) => {
        await get(tx, userId);
        if (await deps.secondFactorStore.remove(tx, userId)) {
          await events.record(tx, userId, {
            kind: "second_factor_changed",
            enabled: false,
            byOperator: true,
          });
          audit.record("admin.totp.disabled", { userId });
        }
        return get(tx, userId);
      });
    },

    async sessions(userId) {
      await get(db, userId);
      const rows = await store.sessions(db, userId);
      return rows.map(({ absoluteExpiresAt, ...s }) => ({
        ...s,
        expiresAt: Math.min(absoluteExpiresAt, s.lastUsedAt + deps.sessionIdleTtlMs),
      }));
    },

    async revokeSessions(userId, ids, keep) {
      if (ids?.some((id) => !uuidPattern.test(id))) {
        throw new HarmonyError(adminErrors.badSessionId);
      }
      const gone = await db.transaction(async (tx) => {
        await get(tx, userId);
        const ended = await store.deleteSessions(tx, userId, ids, keep);
        if (ended.length > 0) {
          await events.record(tx, userId, { kind: "sessions_revoked", sessionIds: ended });
          audit.record("admin.sessions.revoked", { userId });
        }
        return ended;
      });
      sessions.evict({ sessionIds: gone });
      return gone;
    },
  };
}
