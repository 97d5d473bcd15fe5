import type { Clock } from "../clock.js";
import type { Database } from "../db/database.js";
import type { StepView } from "./flow-machine.js";
import type { StepHub } from "./step-hub.js";
import { type FlowKeys, openStep } from "./step-seal.js";
import type { FlowStore, StoredStep } from "./stores.js";

/** Who is told of a flow's steps (see {@link watchFlow}). */
export interface StepWatcher {
  /** The next step, in order, from the flow's first. */
  step(view: StepView): void;
  /**
   * The watch is over: after the session step (`error` undefined), or with
   * what ended it (`h.bad-auth-id`, an expired or spent flow, a database
   * failure). Called at most once, never synchronously from `watchFlow`.
   */
  end(error?: unknown): void;
}

/** A watch in progress. */
export interface Watch {
  /** Stops watching: the watcher hears nothing more. */
  stop(): void;
}

/** What a watch needs of the flows module. */
export interface FlowWatchDeps {
  readonly db: Database;
  readonly clock: Clock;
  readonly flowStore: Pick<FlowStore, "stepsAfter" | "readLog">;
  readonly hub: Pick<StepHub, "subscribe">;
  /** The flow's keys; throws `h.bad-auth-id` for an auth_id that cannot exist. */
  keysFor(authId: string): FlowKeys;
  /** Why there is no flow to watch (`h.bad-auth-id`). */
  unknownError(): Error;
  /** Why a flow past its expiry can no longer be watched. */
  expiredError(flow: { readonly done: boolean }): Error;
}

/** A watch that falls this far behind its announcements re-reads the log instead. */
const MAX_QUEUED = 256;
/** setTimeout's limit. */
const MAX_WAIT_MS = 2 ** 31 - 1;

/**
 * One watch's state. A class rather than closures: with 10,000 streams open
 * these are 10,000 objects, and one object with its methods on the prototype
 * is a fraction of a dozen closures and their contexts. The keys are derived
 * from the auth_id when needed (a hash and an HKDF, microseconds) rather
 * than held as two buffers.
 */
class FlowWatch implements Watch {
  closed = false;
  nextSeq = 1;
  /** Announced steps not yet delivered; the log is re-read instead when `readLog`. */
  queue: StoredStep[] | undefined;
  readLog = true;
  /** A read of the flow or its log is in progress: announcements only queue. */
  busy = true;
  timer: NodeJS.Timeout | undefined;
  unsubscribe: (() => void) | undefined;

  constructor(
    readonly deps: FlowWatchDeps,
    readonly authId: string,
    readonly watcher: StepWatcher,
  ) {}

  stop(): void {
    this.closed = true;
    this.unsubscribe?.();
    clearTimeout(this.timer);
  }

  finish(error?: unknown): void {
    if (this.closed) return;
    this.stop();
    if (error === undefined) this.watcher.end();
    else this.watcher.end(error);
  }

  announced(event: { kind: "step"; step: StoredStep } | { kind: "resync" }): void {
    if (this.closed) return;
    if (event.kind === "resync" || (this.queue?.length ?? 0) >= MAX_QUEUED) {
      this.readLog = true;
      this.queue = undefined;
    } else {
      this.queue ??= [];
      this.queue.push(event.step);
    }
    if (!this.busy) void this.pump();
  }

  /** Delivers the step if it is the next one; true once the watch is over. */
  deliver(keys: FlowKeys, stored: StoredStep): boolean {
    if (stored.seq !== this.nextSeq) return false;
    this.nextSeq++;
    const step = openStep(keys.seal, stored.sealed);
    this.watcher.step(step);
    if (step.kind === "session") this.finish();
    return this.closed;
  }

  async pump(): Promise<void> {
    this.busy = true;
    try {
      const keys = this.deps.keysFor(this.authId);
      while (!this.closed) {
        if (this.readLog) {
          // Everything announced so far is in the log; what arrives during the read stays queued.
          this.readLog = false;
          this.queue = undefined;
          const { db, flowStore } = this.deps;
          const steps = await flowStore.stepsAfter(db, keys.lookup, this.nextSeq - 1);
          if (this.closed) return;
          for (const stored of steps) if (this.deliver(keys, stored)) return;
          continue;
        }
        const stored = this.queue?.shift();
        if (stored === undefined) return;
        // A gap: an announcement was missed.
        if (stored.seq > this.nextSeq) this.readLog = true;
        else if (this.deliver(keys, stored)) return;
      }
    } catch (err) {
      this.finish(err);
    } finally {
      this.busy = false;
    }
  }

  armExpiry(expiresAt: number): void {
    const waitMs = Math.max(0, Math.min(expiresAt - this.deps.clock.now(), MAX_WAIT_MS));
    this.timer = setTimeout(expire, waitMs, this);
  }

  /** The flow's expiry passed: it may have been extended (never, today) or it is over. */
  async expired(): Promise<void> {
    this.timer = undefined;
    try {
      const { db, flowStore, clock } = this.deps;
      const log = await flowStore.readLog(
        db,
        this.deps.keysFor(this.authId).lookup,
        this.nextSeq - 1,
      );
      if (this.closed) return;
      if (!log) return this.finish(this.deps.unknownError());
      if (clock.now() >= log.expiresAt) return this.finish(this.deps.expiredError(log));
      this.armExpiry(log.expiresAt);
      this.readLog = true;
      if (!this.busy) void this.pump();
    } catch (err) {
      this.finish(err);
    }
  }

  async start(): Promise<void> {
    if (this.closed) return;
    try {
      const keys = this.deps.keysFor(this.authId);
      // Subscribe before reading the log, so no step falls between the two;
      // what is announced during the read stays queued for after it.
      this.unsubscribe = this.deps.hub.subscribe(keys.lookup, (event) => this.announced(event));
      this.readLog = false;
      const { db, flowStore, clock } = this.deps;
      const log = await flowStore.readLog(db, keys.lookup, 0);
      if (this.closed) return;
      if (!log) return this.finish(this.deps.unknownError());
      // A completed flow stays readable only for its short grace period.
      if (clock.now() >= log.expiresAt) return this.finish(this.deps.expiredError(log));
      this.armExpiry(log.expiresAt);
      for (const stored of log.steps) if (this.deliver(keys, stored)) return;
      await this.pump();
    } catch (err) {
      this.finish(err);
    }
  }
}

function expire(watch: FlowWatch): void {
  void watch.expired();
}

/**
 * Watches every step of a flow: those already shown (from its log), then
 * each new one as the hub announces it, made up from the log whenever one
 * may have been missed (a gap, a resync, a watch that fell behind); ends
 * after the session step, or when the flow expires. No promise waits while
 * nothing happens. Once stopped, `watcher` hears nothing more.
 */
export function watchFlow(deps: FlowWatchDeps, authId: string, watcher: StepWatcher): Watch {
  const watch = new FlowWatch(deps, authId, watcher);
  // Errors, even a malformed auth_id's, reach the watcher asynchronously.
  queueMicrotask(() => void watch.start());
  return watch;
}
