import type { Caller } from "../caller.js";
import type { Clock } from "../clock.js";
import type { Config } from "../config.js";
import type { Database, Queryable } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import { authErrors } from "./auth-errors.js";
import { randomToken, sha256 } from "./random-ids.js";
import type { SessionStore, SessionUser, StoredSession } from "./stores.js";

/** Session tokens are 32 CSPRNG bytes, base64url: 43 characters. */
const TOKEN_BYTES = 32;
const tokenPattern = /^[A-Za-z0-9_-]{43}$/;

/** last_seen_at is written at most this often, so a check is nearly always a read. */
export const LAST_SEEN_RESOLUTION_MS = 3_600_000;
/** A validated session is trusted from memory this long before it is read again. */
export const SESSION_CACHE_TTL_MS = 60_000;
/** At most this many validated sessions are kept in memory. */
export const SESSION_CACHE_SIZE = 50_000;

/** A valid session, as CheckLoggedIn and Introspect see it. */
export interface AuthenticatedSession {
  readonly userId: bigint;
  /** The session's opaque public ID. */
  readonly sessionId: string;
  readonly createdAt: number;
  readonly lastSeenAt: number;
  /** When it ends unless used again: the earlier of its absolute and idle ends. */
  readonly expiresAt: number;
  readonly user: SessionUser;
}

export interface Sessions {
  /**
   * Creates a session for `userId` on `q` (inside the caller's transaction),
   * recording where it was created from; returns its token.
   */
  create(q: Queryable, userId: bigint, caller: Caller): Promise<string>;
  /** The session a token names; throws `h.blank-session` when missing, unknown or expired. */
  authenticate(token: string | undefined): Promise<AuthenticatedSession>;
  /**
   * Forgets cached sessions of this process at once, after this process
   * ended them or changed their user (other replicas hear of it by NOTIFY).
   */
  evict(which: { readonly sessionIds: readonly string[] } | { readonly userId: bigint }): void;
  /** Deletes expired sessions; returns how many. */
  sweep(): Promise<number>;
  /** Stops listening for deletions. */
  close(): Promise<void>;
}

export type SessionsDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly config: Pick<Config, "sessionIdleTtlMs" | "sessionMaxTtlMs">;
  readonly sessionStore: SessionStore;
};

interface CachedSession extends Omit<StoredSession, "lastSeenAt"> {
  lastSeenAt: number;
  readonly cachedAt: number;
}

/**
 * Sessions: opaque random tokens, stored only as SHA-256, with an idle expiry
 * (SESSION_IDLE_TTL since last use) and an absolute one (SESSION_MAX_TTL
 * since login).
 *
 * A check is on every authenticated call, so validated sessions are kept in
 * memory for up to a minute. Expiry is still exact (it is computed from the
 * cached times on every hit), and a deletion reaches every replica's cache at
 * once: a trigger announces each deleted session through NOTIFY.
 */
export async function createSessions({
  db,
  clock,
  config,
  sessionStore,
}: SessionsDeps): Promise<Sessions> {
  const cache = new Map<string, CachedSession>();
  // Bumped on every announced deletion, so a read that raced one is not cached.
  let deletions = 0;
  const unlistenDeletions = await sessionStore.listenDeletions(db, (hashes) => {
    deletions++;
    if (hashes === "all") cache.clear();
    else for (const hash of hashes) cache.delete(hash);
  });
  // A renamed user's cached sessions would still carry the old name.
  const unlistenUsers = await sessionStore.listenUserChanges(db, (userId) => {
    deletions++;
    if (userId === "all") cache.clear();
    else for (const [key, s] of cache) if (s.userId === userId) cache.delete(key);
  });
  const blank = (message?: string): HarmonyError =>
    new HarmonyError(authErrors.blankSession, message === undefined ? {} : { message });

  return {
    async create(q, userId, caller) {
      const token = randomToken(TOKEN_BYTES);
      const now = clock.now();
      await sessionStore.insert(
        q,
        sha256(token),
        userId,
        now,
        now + config.sessionMaxTtlMs,
        caller,
      );
      return token;
    },

    async authenticate(token) {
      if (token === undefined || token === "") {
        throw blank("no session token: send it in the Authorization header");
      }
      // A token of the wrong shape cannot exist; answer without a lookup.
      if (!tokenPattern.test(token)) throw blank();
      const hash = sha256(token);
      const key = hash.toString("hex");
      const now = clock.now();
      let session = cache.get(key);
      if (session === undefined || now - session.cachedAt >= SESSION_CACHE_TTL_MS) {
        cache.delete(key);
        const seen = deletions;
        const stored = await sessionStore.find(db, hash);
        if (stored === undefined) throw blank();
        session = { ...stored, cachedAt: now };
        if (seen === deletions) {
          if (cache.size >= SESSION_CACHE_SIZE) {
            const oldest = cache.keys().next().value;
            if (oldest !== undefined) cache.delete(oldest);
          }
          cache.set(key, session);
        }
      }
      if (now >= session.expiresAt || now >= session.lastSeenAt + config.sessionIdleTtlMs) {
        cache.delete(key);
        throw blank();
      }
      if (now - session.lastSeenAt >= LAST_SEEN_RESOLUTION_MS) {
        await sessionStore.touch(db, hash, now);
        session.lastSeenAt = now;
      }
      return {
        userId: session.userId,
        sessionId: session.id,
        createdAt: session.createdAt,
        lastSeenAt: session.lastSeenAt,
        expiresAt: Math.min(session.expiresAt, session.lastSeenAt + config.sessionIdleTtlMs),
        user: session.user,
      };
    },

    evict(which) {
      deletions++;
      const gone = "userId" in which ? undefined : new Set(which.sessionIds);
      for (const [key, s] of cache) {
        if (gone ? gone.has(s.id) : s.userId === (which as { userId: bigint }).userId) {
          cache.delete(key);
        }
      }
    },

    async sweep() {
      const now = clock.now();
      return sessionStore.deleteExpired(db, now, now - config.sessionIdleTtlMs);
    },

    async close() {
      await unlistenDeletions();
      await unlistenUsers();
    },
  };
}
