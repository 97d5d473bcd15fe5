import type { SessionStore, StoredSession } from "../auth/stores.js";
import { maybeOne } from "./database.js";

/** Announced by a trigger (migration 0003) whenever sessions are deleted. */
export const sessionDeletionChannel = "cadenza_sessions_deleted";
/** Announced by a trigger (migration 0004) whenever a user's name changes. */
export const userChangeChannel = "cadenza_users_changed";

/** Sessions in Postgres, keyed by the SHA-256 of their token. */
export function createSessionStore(): SessionStore {
  return {
    async insert(q, tokenHash, userId, now, expiresAt, caller) {
      await q.query(
        `INSERT INTO sessions
           (token_hash, user_id, created_at, last_seen_at, expires_at, client_address, user_agent)
         VALUES ($1, $2, $3, $3, $4, $5, $6)`,
        [
          tokenHash,
          userId,
          new Date(now),
          new Date(expiresAt),
          caller.address,
          caller.userAgent ?? null,
        ],
      );
    },

    async find(q, tokenHash): Promise<StoredSession | undefined> {
      const row = await maybeOne<{
        id: string;
        user_id: bigint;
        created_at: Date;
        last_seen_at: Date;
        expires_at: Date;
        username: string;
        homeserver: string | null;
        foreign_user_id: bigint | null;
      }>(
        q,
        `SELECT s.id, s.user_id, s.created_at, s.last_seen_at, s.expires_at,
                u.username, u.homeserver, u.foreign_user_id
           FROM sessions s JOIN users u ON u.id = s.user_id
          WHERE s.token_hash = $1 AND u.disabled_at IS NULL`,
        [tokenHash],
      );
      return (
        row && {
          id: row.id,
          userId: row.user_id,
          createdAt: row.created_at.getTime(),
          lastSeenAt: row.last_seen_at.getTime(),
          expiresAt: row.expires_at.getTime(),
          user: {
            username: row.username,
            homeserver: row.homeserver,
            // Kept in int8 as the same 64 bits (migration 0002).
            foreignUserId: BigInt.asUintN(64, row.foreign_user_id ?? 0n),
          },
        }
      );
    },

    async touch(q, tokenHash, now) {
      await q.query("UPDATE sessions SET last_seen_at = $2 WHERE token_hash = $1", [
        tokenHash,
        new Date(now),
      ]);
    },

    listenDeletions(db, onDeleted) {
      return db.listen(sessionDeletionChannel, {
        message: (payload) => onDeleted(payload === "*" ? "all" : payload.split(",")),
        reconnected: () => onDeleted("all"),
      });
    },

    listenUserChanges(db, onChanged) {
      return db.listen(userChangeChannel, {
        message: (payload) => onChanged(/^\d+$/.test(payload) ? BigInt(payload) : "all"),
        reconnected: () => onChanged("all"),
      });
    },

    async deleteExpired(q, now, idleCutoff) {
      const result = await q.query(
        "DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2",
        [new Date(now), new Date(idleCutoff)],
      );
      return result.rowCount;
    },
  };
}
