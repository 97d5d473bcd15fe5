import type { LoginThrottleStore } from "../limits/login-throttle.js";
import { maybeOne } from "./database.js";

/** Failed logins per account key (migration 0005), decided and counted in one statement. */
export function createLoginThrottleStore(): LoginThrottleStore {
  return {
    async attempt(q, key, now, schedule) {
      // The wait after f failures: none below the threshold, then
      // first × 2^(f − threshold), at most the maximum.
      const counted = await maybeOne<{ failures: number }>(
        q,
        `INSERT INTO login_failures AS f (key, failures, last_failure_at) VALUES ($1, 1, $2)
         ON CONFLICT (key) DO UPDATE SET
           failures = CASE WHEN f.last_failure_at <= $2 - $3 * interval '1 millisecond'
                           THEN 1 ELSE f.failures + 1 END,
           last_failure_at = $2
         WHERE f.last_failure_at <= $2 - $3 * interval '1 millisecond'
            OR f.failures < $4
            OR f.last_failure_at
               + least($6, $5 * power(2, least(f.failures - $4, 40))) * interval '1 millisecond'
               <= $2
         RETURNING failures`,
        [
          key,
          new Date(now),
          schedule.resetMs,
          schedule.failuresBeforeDelay,
          schedule.firstDelayMs,
          schedule.maxDelayMs,
        ],
      );
      if (counted) return { allowed: true };
      const row = await maybeOne<{ wait_ms: number }>(
        q,
        `SELECT extract(epoch FROM last_failure_at
                  + least($4, $3 * power(2, least(failures - $2, 40))) * interval '1 millisecond'
                  - $5::timestamptz) * 1000 AS wait_ms
           FROM login_failures WHERE key = $1`,
        [
          key,
          schedule.failuresBeforeDelay,
          schedule.firstDelayMs,
          schedule.maxDelayMs,
          new Date(now),
        ],
      );
      return { allowed: false, waitMs: Math.max(1, Number(row?.wait_ms ?? 1)) };
    },

    async succeeded(q, key) {
      await q.query("DELETE FROM login_failures WHERE key = $1", [key]);
    },

    async deleteStale(q, before) {
      const result = await q.query("DELETE FROM login_failures WHERE last_failure_at < $1", [
        new Date(before),
      ]);
      return result.rowCount;
    },
  };
}
