import { create } from "@bufbuild/protobuf";
import type { StepView } from "../auth/flow-machine.js";
import type { Flows, StepWatcher } from "../auth/flows.js";
import type { Caller } from "../caller.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import {
  type StreamStepsRequest,
  type StreamStepsResponse,
  StreamStepsResponseSchema,
} from "../gen/protocol/auth/v1/auth_pb.js";
import type { Limits } from "../limits/limits.js";
import type { Metrics } from "../metrics.js";
import type { DirectMethod } from "./rpc/direct-stream.js";
import { toAuthStep } from "./steps.js";

/**
 * StreamSteps once a call is admitted, whichever path it came by (Connect's
 * pipeline, or the direct one in rpc/direct-stream.ts): it holds one of the
 * caller's stream slots and counts in the open-streams gauge for as long as
 * it watches its flow.
 */

export type StepStreamDeps = {
  readonly flows: Pick<Flows, "watch">;
  readonly limits: Pick<Limits, "streams">;
  readonly metrics?: Pick<Metrics, "streamOpened" | "streamClosed"> | undefined;
};

export interface StepStreamCall {
  readonly authId: string;
  readonly caller: Caller;
  /** The protocol, for the gauge's `transport` label. */
  readonly transport: string;
  /** An hRPC WebSocket took its slot when it opened. */
  readonly slotHeld: boolean;
}

/**
 * Opens a StreamSteps call: takes the slot (throwing `hrpc.resource-exhausted`
 * when there is none), then watches the flow. Returns how to stop it; the
 * slot and the gauge are given back once, on `end` or on stop.
 */
export function openStepStream(
  { flows, limits, metrics }: StepStreamDeps,
  call: StepStreamCall,
  watcher: StepWatcher,
): () => void {
  const release = call.slotHeld ? undefined : limits.streams.acquire(call.caller.address);
  metrics?.streamOpened(call.transport);
  let open = true;
  const close = (): void => {
    if (!open) return;
    open = false;
    metrics?.streamClosed(call.transport);
    release?.();
  };
  const stop = flows.watch(call.authId, {
    step: (view) => watcher.step(view),
    end(error) {
      close();
      watcher.end(error);
    },
  });
  return () => {
    stop();
    close();
  };
}

/**
 * A StreamSteps call as the async generator Connect's pipeline wants: the
 * watched steps as responses, ending with the watch, or with the reason
 * `signal` was aborted for (deadline, shutdown, the client gone).
 */
export async function* stepResponses(
  open: (watcher: StepWatcher) => () => void,
  signal: AbortSignal,
): AsyncGenerator<StreamStepsResponse> {
  const queue: StepView[] = [];
  let ended: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const stop = open({
    step(view) {
      queue.push(view);
      wake?.();
    },
    end(error) {
      ended = { error };
      wake?.();
    },
  });
  const onAbort = (): void => wake?.();
  signal.addEventListener("abort", onAbort);
  try {
    for (;;) {
      const view = queue.shift();
      if (view) {
        yield create(StreamStepsResponseSchema, { step: toAuthStep(view) });
        continue;
      }
      if (ended) {
        if (ended.error !== undefined) throw ended.error;
        return;
      }
      // Shutdown aborts with a HarmonyError (Unavailable) for the client.
      if (signal.aborted) throw signal.reason ?? new HarmonyError(hrpcErrors.unavailable);
      await new Promise<void>((resolve) => {
        wake = resolve;
      });
      wake = undefined;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    stop();
  }
}

/**
 * StreamSteps on the direct path (rpc/direct-stream.ts, which applies the
 * interceptors' rules around it): the same slot, gauge and watch as the
 * pipeline's handler above, each step answered as it is watched.
 */
export function streamStepsDirect(deps: StepStreamDeps): DirectMethod {
  return {
    start(request: StreamStepsRequest, call) {
      return (_session, out) =>
        openStepStream(
          deps,
          {
            authId: request.authId,
            caller: call.caller,
            transport: call.protocol,
            slotHeld: call.slotHeld,
          },
          {
            step: (view) =>
              out.message(create(StreamStepsResponseSchema, { step: toAuthStep(view) })),
            end: (error) => out.end(error),
          },
        );
    },
  };
}
