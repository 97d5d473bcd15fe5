import type { Database } from "../db/database.js";
import type { FlowStore, StoredStep } from "./stores.js";

/** What a subscription can be woken with. */
export type HubEvent =
  | { readonly kind: "step"; readonly step: StoredStep }
  /** Notifications may have been missed: re-read the log. */
  | { readonly kind: "resync" }
  | { readonly kind: "timeout" }
  | { readonly kind: "aborted" };

export interface StepSubscription {
  /** The next event; `timeout` once `deadline` (epoch ms, by `now`) passes. */
  next(signal: AbortSignal, waitMs: number): Promise<HubEvent>;
  close(): void;
}

export interface StepHub {
  /** Starts buffering announcements of the flow's steps; call before reading its log. */
  subscribe(flowKey: Buffer): StepSubscription;
  close(): Promise<void>;
}

/** A subscriber that falls this far behind is told to re-read its log instead. */
const MAX_QUEUED = 256;
/** setTimeout's limit. */
const MAX_WAIT_MS = 2 ** 31 - 1;

interface Subscriber {
  queue: HubEvent[];
  wake: (() => void) | undefined;
}

/**
 * Fans step announcements from one LISTEN connection out to this process's
 * StreamSteps calls, by flow. Steps made by any process reach every process,
 * so a stream may attach to a different replica than the one advancing it.
 */
export async function createStepHub({
  db,
  flowStore,
}: {
  readonly db: Database;
  readonly flowStore: Pick<FlowStore, "listenSteps">;
}): Promise<StepHub> {
  const byFlow = new Map<string, Set<Subscriber>>();

  const push = (sub: Subscriber, event: HubEvent): void => {
    if (sub.queue.length >= MAX_QUEUED) sub.queue = [{ kind: "resync" }];
    else sub.queue.push(event);
    sub.wake?.();
  };

  const unlisten = await flowStore.listenSteps(db, {
    step(flowKey, step) {
      const subs = byFlow.get(flowKey.toString("hex"));
      if (subs) for (const sub of subs) push(sub, { kind: "step", step });
    },
    reconnected() {
      for (const subs of byFlow.values()) for (const sub of subs) push(sub, { kind: "resync" });
    },
  });

  return {
    subscribe(flowKey) {
      const id = flowKey.toString("hex");
      const sub: Subscriber = { queue: [], wake: undefined };
      const subs = byFlow.get(id) ?? new Set<Subscriber>();
      byFlow.set(id, subs);
      subs.add(sub);

      return {
        async next(signal, waitMs) {
          const queued = sub.queue.shift();
          if (queued) return queued;
          if (signal.aborted) return { kind: "aborted" };
          return new Promise<HubEvent>((resolve) => {
            const finish = (event: HubEvent | undefined): void => {
              clearTimeout(timer);
              signal.removeEventListener("abort", onAbort);
              sub.wake = undefined;
              resolve(event ?? sub.queue.shift() ?? { kind: "resync" });
            };
            const onAbort = (): void => finish({ kind: "aborted" });
            const timer = setTimeout(
              () => finish({ kind: "timeout" }),
              Math.max(0, Math.min(waitMs, MAX_WAIT_MS)),
            );
            signal.addEventListener("abort", onAbort, { once: true });
            sub.wake = () => finish(undefined);
          });
        },
        close() {
          subs.delete(sub);
          if (subs.size === 0 && byFlow.get(id) === subs) byFlow.delete(id);
          sub.wake?.();
        },
      };
    },
    close: unlisten,
  };
}
