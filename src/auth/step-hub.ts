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
 * A subscription is a listener held by its flow's key: with 10,000 streams
 * open every byte counts, so it holds no queue, promise or timer of its own
 * (the watch in flow-watch.ts keeps what it needs).
 */
export async function createStepHub({
  db,
  flowStore,
}: {
  readonly db: Database;
  readonly flowStore: Pick<FlowStore, "listenSteps">;
}): Promise<StepHub> {
  type Listener = (event: HubEvent) => void;
  // Almost every flow has one stream: its listener is held alone, a set only for more.
  const byFlow = new Map<string, Listener | Set<Listener>>();
  const resync: HubEvent = { kind: "resync" };
  const tell = (listeners: Listener | Set<Listener>, event: HubEvent): void => {
    if (typeof listeners === "function") listeners(event);
    else for (const listener of listeners) listener(event);
  };

  const unlisten = await flowStore.listenSteps(db, {
    step(flowKey, step) {
      const listeners = byFlow.get(flowKey.toString("hex"));
      if (listeners) tell(listeners, { kind: "step", step });
    },
    reconnected() {
      for (const listeners of [...byFlow.values()]) tell(listeners, resync);
    },
  });

  return {
    subscribe(flowKey, listener) {
      const id = flowKey.toString("hex");
      const held = byFlow.get(id);
      if (held === undefined) byFlow.set(id, listener);
      else if (typeof held === "function") byFlow.set(id, new Set([held, listener]));
      else held.add(listener);
      return () => {
        const now = byFlow.get(id);
        if (now === listener) byFlow.delete(id);
        else if (typeof now === "object") {
          now.delete(listener);
          if (now.size === 0) byFlow.delete(id);
        }
      };
    },
    close: unlisten,
  };
}
