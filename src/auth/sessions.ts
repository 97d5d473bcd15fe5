import type { Clock } from "../clock.js";
import type { Config } from "../config.js";
import type { Queryable } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import { authErrors } from "./auth-errors.js";
import { randomToken, sha256 } from "./random-ids.js";
import type { SessionStore } from "./stores.js";

/** Session tokens are 32 CSPRNG bytes, base64url: 43 characters. */
const TOKEN_BYTES = 32;
const tokenPattern = /^[A-Za-z0-9_-]{43}$/;

/** last_seen_at is written at most this often, so a check is nearly always a read. */
export const LAST_SEEN_RESOLUTION_MS = 3_600_000;

export interface AuthenticatedSession {
  readonly userId: bigint;
}

export interface Sessions {
  /** Creates a session for `userId` on `q` (inside the caller's transaction); returns its token. */
  create(q: Queryable, userId: bigint): Promise<string>;
  /** The session a token names; throws `h.blank-session` when missing, unknown or expired. */
  authenticate(token: string | undefined): Promise<AuthenticatedSession>;
  /** Deletes expired sessions; returns how many. */
  sweep(): Promise<number>;
}

export type SessionsDeps = {
  readonly db: Queryable;
  readonly clock: Clock;
  readonly config: Pick<Config, "sessionIdleTtlMs" | "sessionMaxTtlMs">;
  readonly sessionStore: SessionStore;
};

/**
 * Sessions: opaque random tokens, stored only as SHA-256, with an idle expiry
 * (SESSION_IDLE_TTL since last use) and an absolute one (SESSION_MAX_TTL
 * since login).
 */
export function createSessions({ db, clock, config, sessionStore }: SessionsDeps): Sessions {
  const blank = (message?: string): HarmonyError =>
    new HarmonyError(authErrors.blankSession, message === undefined ? {} : { message });

  return {
    async create(q, userId) {
      const token = randomToken(TOKEN_BYTES);
      const now = clock.now();
      await sessionStore.insert(q, sha256(token), userId, now, now + config.sessionMaxTtlMs);
      return token;
    },

    async authenticate(token) {
      if (token === undefined || token === "") {
        throw blank("no session token: send it in the Authorization header");
      }
      // A token of the wrong shape cannot exist; answer without a lookup.
      if (!tokenPattern.test(token)) throw blank();
      const hash = sha256(token);
      const session = await sessionStore.find(db, hash);
      const now = clock.now();
      if (
        session === undefined ||
        now >= session.expiresAt ||
        now >= session.lastSeenAt + config.sessionIdleTtlMs
      ) {
        throw blank();
      }
      if (now - session.lastSeenAt >= LAST_SEEN_RESOLUTION_MS) {
        await sessionStore.touch(db, hash, now);
      }
      return { userId: session.userId };
    },

    async sweep() {
      const now = clock.now();
      return sessionStore.deleteExpired(db, now, now - config.sessionIdleTtlMs);
    },
  };
}
