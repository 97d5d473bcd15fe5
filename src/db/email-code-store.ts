import type { EmailCodeStore } from "../auth/email-codes.js";
import { maybeOne } from "./database.js";

/** Emailed codes (migration 0007). */
export function createEmailCodeStore(): EmailCodeStore {
  return {
    async put(q, code) {
      await q.query(
        `INSERT INTO email_codes
           (flow_key, purpose, user_id, code_hmac, attempts_left, expires_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (flow_key) DO UPDATE SET
           purpose = EXCLUDED.purpose, user_id = EXCLUDED.user_id, code_hmac = EXCLUDED.code_hmac,
           attempts_left = EXCLUDED.attempts_left, spent = false,
           expires_at = EXCLUDED.expires_at, payload = EXCLUDED.payload`,
        [
          code.flowKey,
          code.purpose,
          code.userId,
          code.codeHmac,
          code.attempts,
          new Date(code.expiresAt),
          code.payload === null ? null : JSON.stringify(code.payload),
        ],
      );
    },

    async check(q, flowKey, purpose, codeHmac, now) {
      // A wrong entry costs an attempt, in the statement that finds it wrong.
      const row = await maybeOne<{ ok: boolean; user_id: bigint | null; payload: unknown }>(
        q,
        `UPDATE email_codes
            SET attempts_left = CASE WHEN code_hmac = $3 THEN attempts_left ELSE attempts_left - 1 END
          WHERE flow_key = $1 AND purpose = $2 AND NOT spent AND attempts_left > 0
            AND expires_at > $4
          RETURNING code_hmac = $3 AS ok, user_id, payload`,
        [flowKey, purpose, codeHmac, new Date(now)],
      );
      return row?.ok ? { userId: row.user_id, payload: row.payload } : undefined;
    },

    async spend(q, flowKey, purpose, codeHmac, now) {
      const result = await q.query(
        `UPDATE email_codes SET spent = true
          WHERE flow_key = $1 AND purpose = $2 AND code_hmac = $3 AND NOT spent
            AND attempts_left > 0 AND expires_at > $4`,
        [flowKey, purpose, codeHmac, new Date(now)],
      );
      return result.rowCount === 1;
    },

    async deleteExpired(q, now) {
      const result = await q.query("DELETE FROM email_codes WHERE expires_at <= $1", [
        new Date(now),
      ]);
      return result.rowCount;
    },
  };
}
