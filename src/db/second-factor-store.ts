import type { SecondFactorStore, StoredTotp } from "../auth/second-factor.js";
import { maybeOne } from "./database.js";

/** TOTP factors and recovery codes in Postgres (migration 0008). */
export function createSecondFactorStore(): SecondFactorStore {
  return {
    async find(q, userId): Promise<StoredTotp | undefined> {
      const row = await maybeOne<{
        secret: Uint8Array;
        enabled_at: Date | null;
        last_step: bigint;
        user_disabled: boolean;
      }>(
        q,
        `SELECT t.secret, t.enabled_at, t.last_step, u.disabled_at IS NOT NULL AS user_disabled
           FROM totp_factors t JOIN users u ON u.id = t.user_id
          WHERE t.user_id = $1`,
        [userId],
      );
      return (
        row && {
          secret: row.secret,
          enabledAt: row.enabled_at?.getTime(),
          lastStep: Number(row.last_step),
          userDisabled: row.user_disabled,
        }
      );
    },

    async putPending(q, userId, secret, now) {
      const result = await q.query(
        `INSERT INTO totp_factors (user_id, secret, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE
            SET secret = EXCLUDED.secret, created_at = EXCLUDED.created_at, last_step = 0
          WHERE totp_factors.enabled_at IS NULL`,
        [userId, secret, new Date(now)],
      );
      return result.rowCount === 1;
    },

    async enable(q, userId, step, now) {
      const result = await q.query(
        `UPDATE totp_factors SET enabled_at = $3, last_step = $2
          WHERE user_id = $1 AND enabled_at IS NULL AND last_step < $2`,
        [userId, step, new Date(now)],
      );
      return result.rowCount === 1;
    },

    async useStep(q, userId, step) {
      // The comparison and the write in one statement: of two replicas
      // accepting the same code at once, exactly one updates the row.
      const result = await q.query(
        `UPDATE totp_factors SET last_step = $2
          WHERE user_id = $1 AND enabled_at IS NOT NULL AND last_step < $2`,
        [userId, step],
      );
      return result.rowCount === 1;
    },

    async remove(q, userId) {
      await q.query("DELETE FROM recovery_codes WHERE user_id = $1", [userId]);
      const row = await maybeOne<{ enabled: boolean }>(
        q,
        "DELETE FROM totp_factors WHERE user_id = $1 RETURNING enabled_at IS NOT NULL AS enabled",
        [userId],
      );
      return row?.enabled === true;
    },

    async replaceRecoveryCodes(q, userId, hmacs) {
      await q.query("DELETE FROM recovery_codes WHERE user_id = $1", [userId]);
      if (hmacs.length === 0) return;
      // One row per code, as plain parameters (both drivers bind bytea alike;
      // bytea arrays they do not).
      const rows = hmacs.map((_, i) => `($1, $${i + 2})`).join(", ");
      await q.query(`INSERT INTO recovery_codes (user_id, code_hmac) VALUES ${rows}`, [
        userId,
        ...hmacs,
      ]);
    },

    async hasRecoveryCode(q, userId, hmac) {
      const row = await maybeOne(
        q,
        "SELECT 1 FROM recovery_codes WHERE user_id = $1 AND code_hmac = $2",
        [userId, hmac],
      );
      return row !== undefined;
    },

    async spendRecoveryCode(q, userId, hmac) {
      const result = await q.query(
        "DELETE FROM recovery_codes WHERE user_id = $1 AND code_hmac = $2",
        [userId, hmac],
      );
      return result.rowCount === 1;
    },

    async recoveryCodesLeft(q, userId) {
      const row = await maybeOne<{ n: bigint }>(
        q,
        "SELECT count(*) AS n FROM recovery_codes WHERE user_id = $1",
        [userId],
      );
      return Number(row?.n ?? 0);
    },
  };
}
