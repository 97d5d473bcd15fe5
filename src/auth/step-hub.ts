import type { Database } from "../db/database.js";
import type { FlowStore, StoredStep } from "./stores.js";

/** What a subscriber is told. */
export type HubEvent =
  | { readonly kind: "step"; readonly step: StoredStep }
  /** Notifications may have been missed: re-read the log. */
  | { readonly kind: "resync" };

export interface StepHub {
  /**
   * Tells `listener` of every step announced for the flow from now on, until
   * the returned function is called; subscribe before reading its log. Each
   * subscription needs a listener of its own (one function is one entry). It
   * is called synchronously from the notification and must not throw.
   */
  subscribe(flowKey: Buffer, listener: (event: HubEvent) => void): () => void;
  close(): Promise<void>;
}

/**
 * Fans step announcements from one LISTEN connection out to this process's
 * StreamSteps calls, by flow. Steps made by any process reach every process,
 * so a stream may attach to a different replica than the one advancing it.
 *
 * A subscription is a listener in a set: with 10,000 streams open it is most
 * of what a waiting stream costs, so it holds no queue, promise or timer of
 * its own (the watcher in flows.ts keeps what it needs).
 */
export async function createStepHub({
  db,
  flowStore,
}: {
  readonly db: Database;
  readonly flowStore: Pick<FlowStore, "listenSteps">;
}): Promise<StepHub> {
  const byFlow = new Map<string, Set<(event: HubEvent) => void>>();
  const resync: HubEvent = { kind: "resync" };

  const unlisten = await flowStore.listenSteps(db, {
    step(flowKey, step) {
      const listeners = byFlow.get(flowKey.toString("hex"));
      if (!listeners) return;
      const event: HubEvent = { kind: "step", step };
      for (const listener of listeners) listener(event);
    },
    reconnected() {
      for (const listeners of byFlow.values()) for (const listener of listeners) listener(resync);
    },
  });

  return {
    subscribe(flowKey, listener) {
      const id = flowKey.toString("hex");
      let listeners = byFlow.get(id);
      if (!listeners) {
        listeners = new Set();
        byFlow.set(id, listeners);
      }
      const mine = listeners;
      mine.add(listener);
      return () => {
        mine.delete(listener);
        if (mine.size === 0 && byFlow.get(id) === mine) byFlow.delete(id);
      };
    },
    close: unlisten,
  };
}
