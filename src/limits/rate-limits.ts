import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRes } from "rate-limiter-flexible";
import type { LimitsConfig } from "../config.js";
import type { Database } from "../db/database.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import type { Rate } from "../setting-parsers.js";
import { limitErrors } from "./limit-errors.js";

/** What a client address is limited in, each with its own rate (LIMIT_* settings). */
export const rateKinds = [
  "beginAuth",
  "forms",
  "registrations",
  "loginFederated",
  "federate",
  "emailsPerAccount",
  "emailsPerAddress",
] as const;
export type RateKind = (typeof rateKinds)[number];

export interface RateLimits {
  /** Spends one of `address`'s `kind` budget, or throws `hrpc.resource-exhausted` with the wait. */
  consume(kind: RateKind, address: string): Promise<void>;
  /** Deletes expired counters; returns how many. */
  sweep(): Promise<number>;
}

interface Limiter {
  consume(key: string): Promise<unknown>;
}

/** A store limiter, and the memory one that decides while the database cannot be reached. */
interface InsuredLimiter {
  readonly store: Limiter;
  readonly memory: Limiter;
}

const isDatabaseOutage = (err: unknown): boolean =>
  err instanceof HarmonyError && err.spec.identifier === hrpcErrors.unavailable.identifier;

/**
 * Per-address rates with rate-limiter-flexible: on Postgres its
 * RateLimiterPostgres store (one upsert per call, shared by every replica),
 * through cadenza's own database port so it gets the same timeouts, and a
 * RateLimiterMemory of the same rate deciding while the database cannot be
 * reached (any other store error is a bug and fails the call, so it is seen);
 * on embedded PGlite, in memory (one process holds the database).
 * A client over its budget is then blocked in memory for the rest of the
 * window, so a flood costs no database writes.
 */
export function createRateLimits(deps: {
  readonly db: Database;
  readonly config: Pick<LimitsConfig, RateKind>;
}): RateLimits {
  const { db, config } = deps;
  // rate-limiter-flexible calls `query({ text, values })` on its store client.
  const storeClient = {
    query: (q: { text: string; values?: unknown[] }) => db.query(q.text, q.values ?? []),
  };
  const limiters = new Map<RateKind, InsuredLimiter>();
  for (const kind of rateKinds) {
    const rate: Rate | undefined = config[kind];
    if (!rate) continue;
    const options = {
      keyPrefix: kind,
      points: rate.points,
      duration: Math.ceil(rate.durationMs / 1000),
    };
    const memory = new RateLimiterMemory(options);
    limiters.set(kind, {
      memory,
      store:
        db.kind === "postgres"
          ? new RateLimiterPostgres({
              ...options,
              storeClient,
              storeType: "client",
              tableName: "rate_limits",
              tableCreated: true,
              clearExpiredByTimeout: false,
              inMemoryBlockOnConsumed: rate.points,
            })
          : memory,
    });
  }

  return {
    async consume(kind, address) {
      const limiter = limiters.get(kind);
      if (!limiter) return;
      try {
        await limiter.store.consume(address).catch((err: unknown) => {
          if (!isDatabaseOutage(err)) throw err;
          return limiter.memory.consume(address);
        });
      } catch (err) {
        if (!(err instanceof RateLimiterRes)) throw err;
        const seconds = Math.max(1, Math.ceil(err.msBeforeNext / 1000));
        throw new HarmonyError(limitErrors.tooManyRequests, {
          message: `too many requests from your address: wait ${seconds} s before trying again`,
          retryAfterSeconds: seconds,
        });
      }
    },
    async sweep() {
      if (db.kind !== "postgres" || limiters.size === 0) return 0;
      // rate-limiter-flexible keeps its own time (Date.now), so the sweep does too.
      const result = await db.query("DELETE FROM rate_limits WHERE expire < $1", [Date.now()]);
      return result.rowCount;
    },
  };
}
