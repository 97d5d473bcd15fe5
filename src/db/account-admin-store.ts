import type { AccountAdminStore, AdminUser } from "../auth/account-admin.js";
import { many, maybeOne, uniqueViolation } from "./database.js";

interface UserRow {
  id: bigint;
  username: string;
  email: string | null;
  homeserver: string | null;
  foreign_user_id: bigint | null;
  created_at: Date;
  disabled_at: Date | null;
  session_count: bigint;
  totp_enabled: boolean;
  passkey_count: bigint;
}

const columns = `u.id, u.username, u.email, u.homeserver, u.foreign_user_id, u.created_at,
  u.disabled_at, (SELECT count(*) FROM sessions s WHERE s.user_id = u.id) AS session_count,
  EXISTS (SELECT 1 FROM totp_factors t WHERE t.user_id = u.id AND t.enabled_at IS NOT NULL)
    AS totp_enabled,
  (SELECT count(*) FROM passkeys p WHERE p.user_id = u.id) AS passkey_count`;

const toUser = (r: UserRow): AdminUser => ({
  userId: r.id,
  username: r.username,
  email: r.email ?? "",
  homeserver: r.homeserver ?? "",
  foreignUserId: BigInt.asUintN(64, r.foreign_user_id ?? 0n),
  createdAt: r.created_at.getTime(),
  disabledAt: r.disabled_at?.getTime(),
  sessionCount: Number(r.session_count),
  totpEnabled: r.totp_enabled,
  passkeyCount: Number(r.passkey_count),
});

/** Accounts as operators manage them (migrations 0001–0009). */
export function createAccountAdminStore(): AccountAdminStore {
  return {
    async list(q, query, afterId, limit) {
      // A substring search, escaped for LIKE; keyset-paged by ID.
      const pattern = `%${query.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
      const rows = await many<UserRow>(
        q,
        `SELECT ${columns} FROM users u
          WHERE u.id > $1
            AND ($2 = '%%' OR lower(u.username) LIKE $2 OR lower(coalesce(u.email, '')) LIKE $2)
          ORDER BY u.id LIMIT $3`,
        [afterId, pattern, limit],
      );
      return rows.map(toUser);
    },

    async find(q, by) {
      const row =
        "userId" in by
          ? await maybeOne<UserRow>(q, `SELECT ${columns} FROM users u WHERE u.id = $1`, [
              by.userId,
            ])
          : await maybeOne<UserRow>(q, `SELECT ${columns} FROM users u WHERE u.username_key = $1`, [
              by.usernameKey,
            ]);
      return row && toUser(row);
    },

    async setDisabled(q, userId, at) {
      const result = await q.query(
        at === undefined
          ? "UPDATE users SET disabled_at = NULL WHERE id = $1 AND disabled_at IS NOT NULL"
          : "UPDATE users SET disabled_at = $2 WHERE id = $1 AND disabled_at IS NULL",
        at === undefined ? [userId] : [userId, new Date(at)],
      );
      return result.rowCount === 1;
    },

    async delete(q, userId) {
      const result = await q.query("DELETE FROM users WHERE id = $1", [userId]);
      return result.rowCount === 1;
    },

    async rename(q, userId, username, usernameKey) {
      const current = await maybeOne<{ username: string; homeserver: string | null }>(
        q,
        "SELECT username, homeserver FROM users WHERE id = $1 FOR UPDATE",
        [userId],
      );
      if (!current) return undefined;
      if (current.homeserver !== null) return "not-local";
      try {
        await q.query("UPDATE users SET username = $2, username_key = $3 WHERE id = $1", [
          userId,
          username,
          usernameKey,
        ]);
      } catch (err) {
        if (uniqueViolation(err) === "users_username_unique") return "taken";
        throw err;
      }
      return { previous: current.username };
    },

    async sessions(q, userId) {
      const rows = await many<{
        id: string;
        created_at: Date;
        last_seen_at: Date;
        expires_at: Date;
        client_address: string | null;
        user_agent: string | null;
      }>(
        q,
        `SELECT id, created_at, last_seen_at, expires_at, client_address, user_agent
           FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id`,
        [userId],
      );
      return rows.map((r) => ({
        sessionId: r.id,
        createdAt: r.created_at.getTime(),
        lastUsedAt: r.last_seen_at.getTime(),
        absoluteExpiresAt: r.expires_at.getTime(),
        clientAddress: r.client_address ?? "",
        userAgent: r.user_agent ?? "",
      }));
    },

    async deleteSessions(q, userId, ids, keep) {
      const rows = await many<{ id: string }>(
        q,
        `DELETE FROM sessions
          WHERE user_id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2::uuid[]))
            AND ($3::uuid IS NULL OR id <> $3::uuid)
          RETURNING id`,
        [userId, ids === undefined ? null : [...ids], keep ?? null],
      );
      return rows.map((r) => r.id);
    },
  };
}
