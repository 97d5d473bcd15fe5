import type { Audit } from "../audit.js";
import { type Caller, unknownCaller } from "../caller.js";
import type { Clock } from "../clock.js";
import type { Config } from "../config.js";
import type { Database, Queryable } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import { limitErrors } from "../limits/limit-errors.js";
import type { Limits } from "../limits/limits.js";
import { authErrors } from "./auth-errors.js";
import {
  advance,
  type ClientFeature,
  type FlowInput,
  type FlowPolicy,
  type FlowState,
  initialStateFor,
  type StepView,
} from "./flow-machine.js";
import { type FlowWatchDeps, type StepWatcher, type Watch, watchFlow } from "./flow-watch.js";
import { randomToken } from "./random-ids.js";
import type { StepHub } from "./step-hub.js";
import { type FlowKeys, flowKeys, sealStep } from "./step-seal.js";
import type { FlowStore, StoredFlow } from "./stores.js";
import type { Submissions } from "./submissions.js";

export type { StepWatcher, Watch } from "./flow-watch.js";

/** auth_ids are 24 CSPRNG bytes (192 bits), base64url: 32 characters. */
const AUTH_ID_BYTES = 24;
const authIdPattern = /^[A-Za-z0-9_-]{32}$/;
/** A completed flow's log stays readable this long, for a stream that attaches late. */
export const SPENT_FLOW_GRACE_MS = 60_000;
/** A flow that shows more steps than this is cut off, so its log stays small. */
export const MAX_STEPS_PER_FLOW = 256;
/** Concurrent show-step calls on one flow retry this often before giving up. */
const MAX_ATTEMPTS = 5;

export interface Flows {
  /**
   * Starts a flow for `caller`, offering it the client `features` it
   * announced (and the server offers it); returns its auth_id.
   */
  begin(caller?: Caller, features?: readonly ClientFeature[]): Promise<string>;
  /**
   * A flow as it stands, for a call that reads it without moving it (a
   * passkey step's options): its lookup key and record. Throws
   * `h.bad-auth-id` for an unknown, spent or expired flow.
   */
  peek(authId: string): Promise<{ flowKey: Buffer; flow: StoredFlow }>;
  /** Applies a NextStep or StepBack input; returns the step now current. */
  advance(authId: string, input: FlowInput, caller?: Caller): Promise<StepView>;
  /**
   * Watches every step of the flow: those already shown, then each new one as
   * it is shown by any process, ending after the session step, until the
   * watch is stopped (`watcher` then hears nothing more).
   */
  watch(authId: string, watcher: StepWatcher): Watch;
  /** Deletes expired flows; returns how many. */
  sweep(): Promise<number>;
  /** Flows neither finished nor expired, on every replica. */
  liveCount(): Promise<number>;
}

export type FlowsDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly config: Pick<Config, "flowTtlMs">;
  readonly policy: FlowPolicy;
  readonly flowStore: FlowStore;
  readonly hub: StepHub;
  readonly submissions: Submissions;
  readonly limits: Pick<Limits, "rate" | "liveFlowsPerAddress">;
  readonly audit: Audit;
};

/** The auth flow over its store: the machine decides, this module does the I/O. */
export function createFlows(deps: FlowsDeps): Flows {
  const { db, clock, config, policy, flowStore, hub, submissions, limits, audit } = deps;

  const keysFor = (authId: string): FlowKeys => {
    if (authId === "") throw new HarmonyError(authErrors.missingAuthId);
    // An auth_id of the wrong shape cannot exist; answer without a lookup.
    if (!authIdPattern.test(authId)) throw new HarmonyError(authErrors.unknownAuthId);
    return flowKeys(authId);
  };

  const load = async (keys: FlowKeys): Promise<StoredFlow> => {
    const flow = await flowStore.load(db, keys.lookup);
    if (!flow) throw new HarmonyError(authErrors.unknownAuthId);
    return flow;
  };

  const append = async (
    q: Queryable,
    keys: FlowKeys,
    flow: StoredFlow,
    state: FlowState,
    step: StepView,
  ): Promise<boolean> => {
    if (flow.stepCount >= MAX_STEPS_PER_FLOW) throw new HarmonyError(authErrors.tooManySteps);
    const done = step.kind === "session";
    const expiresAt = done ? clock.now() + SPENT_FLOW_GRACE_MS : flow.expiresAt;
    const seq = await flowStore.appendStep(
      q,
      keys.lookup,
      flow.version,
      { state, done, expiresAt },
      sealStep(keys.seal, step),
    );
    return seq !== undefined;
  };

  const expiredError = (flow: { readonly done: boolean }) =>
    new HarmonyError(flow.done ? authErrors.spentAuthId : authErrors.expiredAuthId);

  const watchDeps: FlowWatchDeps = {
    db,
    clock,
    flowStore,
    hub,
    keysFor,
    unknownError: () => new HarmonyError(authErrors.unknownAuthId),
    expiredError,
  };

  return {
    async begin(caller = unknownCaller, features = []) {
      await limits.rate("beginAuth", caller);
      const authId = randomToken(AUTH_ID_BYTES);
      const now = clock.now();
      const inserted = await flowStore.insert(
        db,
        flowKeys(authId).lookup,
        initialStateFor(features),
        now,
        now + config.flowTtlMs,
        caller.address,
        limits.liveFlowsPerAddress,
      );
      if (!inserted) {
        audit.record("limit.exceeded", { caller, limit: "liveFlows" });
        throw new HarmonyError(limitErrors.tooManyFlows, {
          message: `your address has ${limits.liveFlowsPerAddress} unfinished auth flows: finish one or wait for them to expire`,
          retryAfterSeconds: Math.ceil(config.flowTtlMs / 1000),
        });
      }
      return authId;
    },

    async peek(authId) {
      const keys = keysFor(authId);
      const flow = await load(keys);
      if (flow.done) throw new HarmonyError(authErrors.spentAuthId);
      if (clock.now() >= flow.expiresAt) throw new HarmonyError(authErrors.expiredAuthId);
      return { flowKey: keys.lookup, flow };
    },

    async advance(authId, input, caller = unknownCaller) {
      const keys = keysFor(authId);
      if (input.kind === "form") await limits.rate("forms", caller);
      for (let attempt = 1; ; attempt++) {
        const flow = await load(keys);
        const outcome = advance(flow, input, clock.now(), policy);
        if (outcome.kind === "submit") {
          return submissions.carryOut(
            {
              flow,
              flowKey: keys.lookup,
              caller,
              next: outcome.next,
              append: (q, state, step) => append(q, keys, flow, state, step),
            },
            outcome.submission,
          );
        }
        if (await append(db, keys, flow, outcome.state, outcome.step)) return outcome.step;
        // Another call moved the flow between our read and write: re-read and
        // re-apply, since showing a step has no side effects.
        if (attempt >= MAX_ATTEMPTS) throw new HarmonyError(authErrors.flowConflict);
      }
    },

    watch(authId, watcher) {
      return watchFlow(watchDeps, authId, watcher);
    },

    sweep() {
      return flowStore.deleteExpired(db, clock.now());
    },

    liveCount() {
      return flowStore.countLive(db, clock.now());
    },
  };
}
