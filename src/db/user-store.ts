import type { InsertUserResult, StoredUser, UserStore } from "../auth/stores.js";
import { maybeOne, type Queryable, uniqueViolation } from "./database.js";

async function findUser(
  q: Queryable,
  where: string,
  value: unknown,
): Promise<StoredUser | undefined> {
  const row = await maybeOne<{
    id: bigint;
    email: string | null;
    username: string;
    password_hash: string | null;
    disabled: boolean;
  }>(
    q,
    `SELECT id, email, username, password_hash, disabled_at IS NOT NULL AS disabled
       FROM users WHERE ${where}`,
    [value],
  );
  return (
    row && {
      id: row.id,
      email: row.email ?? "",
      username: row.username,
      passwordHash: row.password_hash,
      disabled: row.disabled,
    }
  );
}

/** Accounts in Postgres. */
export function createUserStore(): UserStore {
  return {
    findByEmailKey: (q, emailKey) => findUser(q, "email_key = $1", emailKey),
    findById: (q, id) => findUser(q, "id = $1", id),

    async taken(q, emailKey, usernameKey) {
      const row = await maybeOne<{ email: boolean; username: boolean }>(
        q,
        `SELECT bool_or(email_key = $1) AS email, bool_or(username_key = $2) AS username
           FROM users WHERE email_key = $1 OR username_key = $2`,
        [emailKey, usernameKey],
      );
      return { email: row?.email === true, username: row?.username === true };
    },

    async insert(q, user): Promise<InsertUserResult> {
      try {
        const result = await q.query(
          `INSERT INTO users (id, email, email_key, username, username_key, password_hash, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (id) DO NOTHING`,
          [
            user.id,
            user.email,
            user.emailKey,
            user.username,
            user.usernameKey,
            user.passwordHash,
            new Date(user.createdAt),
          ],
        );
        return result.rowCount === 1 ? "created" : "id-taken";
      } catch (err) {
        const constraint = uniqueViolation(err);
        if (constraint === "users_email_unique") return "email-taken";
        if (constraint === "users_username_unique") return "username-taken";
        throw err;
      }
    },

    async setPasswordHash(q, id, hash) {
      await q.query(
        "UPDATE users SET password_hash = $2, credential_epoch = credential_epoch + 1 WHERE id = $1",
        [id, hash],
      );
    },

    async credentialEpoch(q, id, lock = false) {
      const row = await maybeOne<{ credential_epoch: number }>(
        q,
        `SELECT credential_epoch FROM users WHERE id = $1${lock ? " FOR UPDATE" : ""}`,
        [id],
      );
      return row?.credential_epoch;
    },

    async replacePasswordHash(q, id, from, to) {
      await q.query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2", [
        id,
        from,
        to,
      ]);
    },
  };
}
