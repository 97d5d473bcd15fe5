import type { PasskeyDeviceType, PasskeyStore, StoredPasskey } from "../auth/passkeys.js";
import { many, maybeOne } from "./database.js";

interface PasskeyRow {
  credential_id: Uint8Array;
  user_id: bigint;
  public_key: Uint8Array;
  sign_count: bigint;
  transports: string;
  device_type: string;
  backed_up: boolean;
  aaguid: string;
  name: string;
  created_at: Date;
  last_used_at: Date | null;
}

const columns = `p.credential_id, p.user_id, p.public_key, p.sign_count, p.transports,
  p.device_type, p.backed_up, p.aaguid, p.name, p.created_at, p.last_used_at`;

const toPasskey = (r: PasskeyRow): StoredPasskey => ({
  credentialId: r.credential_id,
  userId: r.user_id,
  publicKey: r.public_key,
  signCount: Number(r.sign_count),
  transports: r.transports === "" ? [] : r.transports.split(","),
  deviceType: r.device_type as PasskeyDeviceType,
  backedUp: r.backed_up,
  aaguid: r.aaguid,
  name: r.name,
  createdAt: r.created_at.getTime(),
  lastUsedAt: r.last_used_at?.getTime(),
});

/** Passkeys and the challenges of ceremonies in progress, in Postgres (migration 0009). */
export function createPasskeyStore(): PasskeyStore {
  return {
    async insert(q, p) {
      const result = await q.query(
        `INSERT INTO passkeys (credential_id, user_id, public_key, sign_count, transports,
                               device_type, backed_up, aaguid, name, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (credential_id) DO NOTHING`,
        [
          p.credentialId,
          p.userId,
          p.publicKey,
          p.signCount,
          p.transports.join(","),
          p.deviceType,
          p.backedUp,
          p.aaguid,
          p.name,
          new Date(p.createdAt),
        ],
      );
      return result.rowCount === 1;
    },

    async find(q, credentialId) {
      const row = await maybeOne<PasskeyRow & { user_disabled: boolean }>(
        q,
        `SELECT ${columns}, u.disabled_at IS NOT NULL AS user_disabled
           FROM passkeys p JOIN users u ON u.id = p.user_id
          WHERE p.credential_id = $1`,
        [credentialId],
      );
      return row && { ...toPasskey(row), userDisabled: row.user_disabled };
    },

    async list(q, userId) {
      const rows = await many<PasskeyRow>(
        q,
        `SELECT ${columns} FROM passkeys p WHERE p.user_id = $1
          ORDER BY p.created_at DESC, p.credential_id`,
        [userId],
      );
      return rows.map(toPasskey);
    },

    async count(q, userId) {
      const row = await maybeOne<{ n: bigint }>(
        q,
        "SELECT count(*) AS n FROM passkeys WHERE user_id = $1",
        [userId],
      );
      return Number(row?.n ?? 0);
    },

    async recordUse(q, credentialId, signCount, backedUp, now) {
      // Forward only, in one statement: two sign-ins with one counter value
      // (a cloned authenticator) cannot both pass, even on two replicas.
      const result = await q.query(
        `UPDATE passkeys SET sign_count = $2, backed_up = $3, last_used_at = $4
          WHERE credential_id = $1 AND (sign_count < $2 OR (sign_count = 0 AND $2 = 0))`,
        [credentialId, signCount, backedUp, new Date(now)],
      );
      return result.rowCount === 1;
    },

    async delete(q, userId, credentialIds) {
      if (credentialIds?.length === 0) return [];
      // One parameter per ID: both drivers bind bytea alike, bytea arrays they do not.
      const ids = credentialIds?.map((_, i) => `$${i + 2}`).join(", ");
      const rows = await many<{ credential_id: Uint8Array }>(
        q,
        `DELETE FROM passkeys WHERE user_id = $1${ids ? ` AND credential_id IN (${ids})` : ""}
         RETURNING credential_id`,
        [userId, ...(credentialIds ?? [])],
      );
      return rows.map((r) => r.credential_id);
    },

    async putChallenge(q, purpose, subject, challenge, userId, expiresAt) {
      await q.query(
        `INSERT INTO passkey_challenges (purpose, subject, challenge, user_id, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (purpose, subject) DO UPDATE
            SET challenge = EXCLUDED.challenge, user_id = EXCLUDED.user_id,
                expires_at = EXCLUDED.expires_at`,
        [purpose, subject, challenge, userId, new Date(expiresAt)],
      );
    },

    async takeChallenge(q, purpose, subject, now) {
      // Deleted as it is read: of two answers racing for one challenge, on
      // any replica, exactly one gets it.
      const row = await maybeOne<{ challenge: string; user_id: bigint | null; live: boolean }>(
        q,
        `DELETE FROM passkey_challenges WHERE purpose = $1 AND subject = $2
         RETURNING challenge, user_id, expires_at > $3 AS live`,
        [purpose, subject, new Date(now)],
      );
      return row?.live ? { challenge: row.challenge, userId: row.user_id } : undefined;
    },

    async deleteExpiredChallenges(q, now) {
      const result = await q.query("DELETE FROM passkey_challenges WHERE expires_at <= $1", [
        new Date(now),
      ]);
      return result.rowCount;
    },
  };
}
