import type { Audit } from "../audit.js";
import type { Caller } from "../caller.js";
import type { Clock } from "../clock.js";
import type { LimitsConfig } from "../config.js";
import type { Database } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import { createGate, createStreamSlots, type Gate, type StreamSlots } from "./admission.js";
import { limitErrors } from "./limit-errors.js";
import { createLoginThrottle, type LoginThrottleStore } from "./login-throttle.js";
import { createRateLimits, type RateKind } from "./rate-limits.js";

/**
 * Every abuse limit in one place, for the domain to call where a limit
 * applies: per-address rates, the per-account login schedule, the cap on
 * live flows per address, open streams, and the argon2id gate. Each refusal
 * is `hrpc.resource-exhausted` with the wait, and an audit line.
 */
export interface Limits {
  /** Spends one of the caller's `kind` budget, or throws. */
  rate(kind: RateKind, caller: Caller): Promise<void>;
  /** Spends one of `key`'s `kind` budget (a key other than an address: an account), or throws. */
  rateFor(kind: RateKind, key: string, caller: Caller): Promise<void>;
  /**
   * Admits a login attempt for an account key (the SHA-256 of the normalised
   * email), or throws. Second-factor codes and passwords checked outside the
   * flow (the account service) count here too, without a flow.
   */
  loginAttempt(key: Buffer, caller: Caller, flowKey?: Buffer): Promise<void>;
  /** A login for the key succeeded: its failures are forgotten. */
  loginSucceeded(key: Buffer): Promise<void>;
  /** Unfinished flows one address may have; undefined is no cap. */
  readonly liveFlowsPerAddress: number | undefined;
  readonly streams: StreamSlots;
  /** The argon2id gate. */
  readonly argon2: Gate;
  sweep(): Promise<number>;
}

export function createLimits(deps: {
  readonly db: Database;
  readonly clock: Clock;
  readonly config: LimitsConfig;
  readonly audit: Audit;
  readonly loginStore: LoginThrottleStore;
}): Limits {
  const { db, clock, config, audit } = deps;
  const rates = createRateLimits({ db, config });
  const login = createLoginThrottle({ db, clock, store: deps.loginStore, schedule: config.login });
  const refused = (err: unknown, fields: Parameters<Audit["record"]>[1]): never => {
    if (err instanceof HarmonyError) audit.record("limit.exceeded", fields);
    throw err;
  };
  return {
    async rate(kind, caller) {
      await rates
        .consume(kind, caller.address)
        .catch((err) => refused(err, { caller, limit: kind }));
    },
    async rateFor(kind, key, caller) {
      await rates.consume(kind, key).catch((err) => refused(err, { caller, limit: kind }));
    },
    async loginAttempt(key, caller, flowKey) {
      await login.attempt(key).catch((err: unknown) => {
        if (err instanceof HarmonyError) {
          audit.record("login.throttled", { caller, ...(flowKey ? { flowKey } : {}) });
        }
        throw err;
      });
    },
    loginSucceeded: (key) => login.succeeded(key),
    liveFlowsPerAddress: config.liveFlowsPerAddress,
    streams: auditedSlots(
      createStreamSlots({ perAddress: config.streamsPerAddress, total: config.openStreams }),
      audit,
    ),
    argon2: createGate(config.argon2, () => audit.record("limit.exceeded", { limit: "argon2" })),
    async sweep() {
      return (await rates.sweep()) + (await login.sweep());
    },
  };
}

/** Stream slots whose refusals are audited (`limit.exceeded`, counted in the metrics). */
function auditedSlots(slots: StreamSlots, audit: Audit): StreamSlots {
  return {
    acquire(address) {
      try {
        return slots.acquire(address);
      } catch (err) {
        if (err instanceof HarmonyError) {
          const limit =
            err.spec === limitErrors.tooManyStreams ? "streamsPerAddress" : "openStreams";
          audit.record("limit.exceeded", { caller: { address, userAgent: undefined }, limit });
        }
        throw err;
      }
    },
    get open() {
      return slots.open;
    },
  };
}
