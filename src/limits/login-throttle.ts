import type { Clock } from "../clock.js";
import type { LimitsConfig } from "../config.js";
import type { Database, Queryable } from "../db/database.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import { limitErrors } from "./limit-errors.js";

/** The Keycloak-like schedule of waits between failed logins of one account. */
export type LoginSchedule = NonNullable<LimitsConfig["login"]>;

/** The wait after `failures` failures: none up to the threshold, then doubling to the maximum. */
export function delayAfter(failures: number, schedule: LoginSchedule): number {
  if (failures < schedule.failuresBeforeDelay) return 0;
  const doublings = Math.min(failures - schedule.failuresBeforeDelay, 40);
  return Math.min(schedule.maxDelayMs, schedule.firstDelayMs * 2 ** doublings);
}

export interface LoginThrottleStore {
  /**
   * Counts an attempt for `key` if the schedule allows one now, in one
   * statement (so concurrent guesses cannot all slip through before the
   * first failure is recorded). Returns the wait left otherwise.
   */
  attempt(
    q: Queryable,
    key: Buffer,
    now: number,
    schedule: LoginSchedule,
  ): Promise<{ allowed: true } | { allowed: false; waitMs: number }>;
  /** Forgets `key`'s failures (a successful login). */
  succeeded(q: Queryable, key: Buffer): Promise<void>;
  /** Deletes records older than the reset period; returns how many. */
  deleteStale(q: Queryable, before: number): Promise<number>;
}

export interface LoginThrottle {
  /**
   * Admits one login attempt for an account key, or throws
   * `hrpc.resource-exhausted` with the wait. The attempt counts as a failure
   * until {@link succeeded} says otherwise.
   */
  attempt(key: Buffer): Promise<void>;
  succeeded(key: Buffer): Promise<void>;
  sweep(): Promise<number>;
}

/** What a throttle decides in memory while the database cannot be reached. */
function createMemoryStore(): LoginThrottleStore {
  const failures = new Map<string, { count: number; last: number }>();
  return {
    async attempt(_q, key, now, schedule) {
      const id = key.toString("hex");
      const seen = failures.get(id);
      const fresh = !seen || now - seen.last >= schedule.resetMs;
      const count = fresh ? 0 : seen.count;
      const wait = fresh ? 0 : seen.last + delayAfter(count, schedule) - now;
      if (wait > 0) return { allowed: false, waitMs: wait };
      if (failures.size >= 100_000 && !seen) failures.delete(failures.keys().next().value ?? "");
      failures.set(id, { count: count + 1, last: now });
      return { allowed: true };
    },
    async succeeded(_q, key) {
      failures.delete(key.toString("hex"));
    },
    async deleteStale(_q, before) {
      let n = 0;
      for (const [id, f] of failures) if (f.last < before && failures.delete(id)) n++;
      return n;
    },
  };
}

const isDatabaseOutage = (err: unknown): boolean =>
  err instanceof HarmonyError && err.spec.identifier === hrpcErrors.unavailable.identifier;

/**
 * Failed logins per account, shared by every replica through the database,
 * deciding in memory while the database is unreachable (rather than letting
 * every guess through or refusing every login).
 */
export function createLoginThrottle(deps: {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: LoginThrottleStore;
  readonly schedule: LoginSchedule | undefined;
}): LoginThrottle {
  const { db, clock, store, schedule } = deps;
  const memory = createMemoryStore();
  const withFallback = async <T>(run: (s: LoginThrottleStore) => Promise<T>): Promise<T> => {
    try {
      return await run(store);
    } catch (err) {
      if (!isDatabaseOutage(err)) throw err;
      return run(memory);
    }
  };
  return {
    async attempt(key) {
      if (!schedule) return;
      const decision = await withFallback((s) => s.attempt(db, key, clock.now(), schedule));
      if (!decision.allowed) {
        const seconds = Math.max(1, Math.ceil(decision.waitMs / 1000));
        throw new HarmonyError(limitErrors.loginDelayed, {
          message: `too many failed logins for this account: wait ${seconds} s before trying again`,
          retryAfterSeconds: seconds,
        });
      }
    },
    async succeeded(key) {
      if (!schedule) return;
      await withFallback((s) => s.succeeded(db, key));
    },
    async sweep() {
      if (!schedule) return 0;
      const before = clock.now() - schedule.resetMs;
      await memory.deleteStale(db, before);
      return store.deleteStale(db, before);
    },
  };
}
