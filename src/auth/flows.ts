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
import { randomToken } from "./random-ids.js";
import type { StepHub } from "./step-hub.js";
import { type FlowKeys, flowKeys, openStep, sealStep } from "./step-seal.js";
import type { FlowStore, StoredFlow, StoredStep } from "./stores.js";
import type { Submissions } from "./submissions.js";

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
   * it is shown by any process, ending after the session step. Returns how to
   * stop watching; `watcher` hears nothing after that.
   */
  watch(authId: string, watcher: StepWatcher): () => void;
  /** Deletes expired flows; returns how many. */
  sweep(): Promise<number>;
  /** Flows neither finished nor expired, on every replica. */
  liveCount(): Promise<number>;
}

/** Who is told of a flow's steps (see {@link Flows.watch}). */
export interface StepWatcher {
  /** The next step, in order, from the flow's first. */
  step(view: StepView): void;
  /**
   * The watch is over: after the session step (`error` undefined), or with
   * what ended it (`h.bad-auth-id`, an expired or spent flow, a database
   * failure). Called at most once, never synchronously from `watch`.
   */
  end(error?: unknown): void;
}

/** A watcher that falls this far behind its announcements re-reads the log instead. */
const MAX_QUEUED = 256;
/** setTimeout's limit. */
const MAX_WAIT_MS = 2 ** 31 - 1;

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

  const expiredError = (flow: StoredFlow) =>
    new HarmonyError(flow.done ? authErrors.spentAuthId : authErrors.expiredAuthId);

  /**
   * One watch: a listener on the hub, the steps it announced and not yet
   * delivered, and a timer for the flow's expiry; no promise waits while
   * nothing happens (10,000 open streams are 10,000 of these).
   */
  const watchFlow = (authId: string, watcher: StepWatcher): (() => void) => {
    let closed = false;
    let nextSeq = 1;
    /** Announced steps not yet delivered; the log is re-read instead when `readLog`. */
    let queue: StoredStep[] = [];
    let readLog = true;
    /** A read of the flow or its log is in progress: announcements only queue. */
    let busy = true;
    let timer: NodeJS.Timeout | undefined;
    let unsubscribe: (() => void) | undefined;

    const stop = (): void => {
      closed = true;
      unsubscribe?.();
      clearTimeout(timer);
    };
    const finish = (error?: unknown): void => {
      if (closed) return;
      stop();
      if (error === undefined) watcher.end();
      else watcher.end(error);
    };
    /** Delivers the step if it is the next one; true once the watch is over. */
    const deliver = (keys: FlowKeys, stored: StoredStep): boolean => {
      if (stored.seq !== nextSeq) return false;
      nextSeq++;
      const step = openStep(keys.seal, stored.sealed);
      watcher.step(step);
      if (step.kind === "session") finish();
      return closed;
    };
    const pump = async (keys: FlowKeys): Promise<void> => {
      busy = true;
      try {
        while (!closed) {
          if (readLog) {
            // Everything announced so far is in the log; what arrives during the read stays queued.
            readLog = false;
            queue = [];
            const steps = await flowStore.stepsAfter(db, keys.lookup, nextSeq - 1);
            if (closed) return;
            for (const stored of steps) if (deliver(keys, stored)) return;
            continue;
          }
          const stored = queue.shift();
          if (stored === undefined) return;
          // A gap: an announcement was missed.
          if (stored.seq > nextSeq) readLog = true;
          else if (deliver(keys, stored)) return;
        }
      } catch (err) {
        finish(err);
      } finally {
        busy = false;
      }
    };
    const armExpiry = (keys: FlowKeys, expiresAt: number): void => {
      const waitMs = Math.max(0, Math.min(expiresAt - clock.now(), MAX_WAIT_MS));
      timer = setTimeout(() => {
        timer = undefined;
        load(keys).then(
          (flow) => {
            if (closed) return;
            if (clock.now() >= flow.expiresAt) return finish(expiredError(flow));
            armExpiry(keys, flow.expiresAt);
            readLog = true;
            if (!busy) void pump(keys);
          },
          (err: unknown) => finish(err),
        );
      }, waitMs);
    };

    const start = async (): Promise<void> => {
      const keys = keysFor(authId);
      // Subscribe before reading the log, so no step falls between the two.
      unsubscribe = hub.subscribe(keys.lookup, (event) => {
        if (closed) return;
        if (event.kind === "resync" || queue.length >= MAX_QUEUED) {
          readLog = true;
          queue = [];
        } else {
          queue.push(event.step);
        }
        if (!busy) void pump(keys);
      });
      const flow = await load(keys);
      if (closed) return;
      // A completed flow stays readable only for its short grace period.
      if (clock.now() >= flow.expiresAt) return finish(expiredError(flow));
      armExpiry(keys, flow.expiresAt);
      await pump(keys);
    };
    start().catch((err: unknown) => finish(err));
    return stop;
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
      return watchFlow(authId, watcher);
    },

    sweep() {
      return flowStore.deleteExpired(db, clock.now());
    },

    liveCount() {
      return flowStore.countLive(db, clock.now());
    },
  };
}
