import { create } from "@bufbuild/protobuf";
import type { StepView } from "../auth/flow-machine.js";
import type { Flows, StepWatcher, Watch } from "../auth/flows.js";
import type { Caller } from "../caller.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import {
  type StreamStepsRequest,
  type StreamStepsResponse,
  StreamStepsResponseSchema,
} from "../gen/protocol/auth/v1/auth_pb.js";
import type { Limits } from "../limits/limits.js";
import type { Metrics } from "../metrics.js";
import type { DirectMethod, DirectOutput } from "./rpc/direct-stream.js";
import { toAuthStep } from "./steps.js";

/**
 * StreamSteps once a call is admitted, whichever path it came by (Connect's
 * pipeline, or the direct one in rpc/direct-stream.ts): it holds one of the
 * caller's stream slots and counts in the open-streams gauge for as long as
 * it watches its flow, and answers each step as it is watched.
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

/** Where a StreamSteps call's answers go: each step's response, then its end. */
export type StepOutput = DirectOutput<StreamStepsResponse>;

/**
 * One open StreamSteps call. A class, not closures, for the same reason as
 * the watch under it (auth/flow-watch.ts): one small object per open stream.
 */
class StepStream implements StepWatcher, Watch {
  private open = true;
  watch: Watch | undefined;

  constructor(
    private readonly metrics: StepStreamDeps["metrics"],
    private readonly transport: string,
    private readonly release: (() => void) | undefined,
    private readonly out: StepOutput,
  ) {}

  step(view: StepView): void {
    this.out.message(create(StreamStepsResponseSchema, { step: toAuthStep(view) }));
  }

  end(error?: unknown): void {
    this.close();
    this.out.end(error);
  }

  stop(): void {
    this.watch?.stop();
    this.close();
  }

  /** Gives the slot and the gauge back, once. */
  private close(): void {
    if (!this.open) return;
    this.open = false;
    this.metrics?.streamClosed(this.transport);
    this.release?.();
  }
}

/**
 * Opens a StreamSteps call: takes the slot (throwing `hrpc.resource-exhausted`
 * when there is none), then watches the flow. The slot and the gauge are
 * given back once, when it ends or is stopped.
 */
export function openStepStream(
  { flows, limits, metrics }: StepStreamDeps,
  call: StepStreamCall,
  out: StepOutput,
): Watch {
  const release = call.slotHeld ? undefined : limits.streams.acquire(call.caller.address);
  metrics?.streamOpened(call.transport);
  const stream = new StepStream(metrics, call.transport, release, out);
  stream.watch = flows.watch(call.authId, stream);
  return stream;
}

/**
 * A StreamSteps call as the async generator Connect's pipeline wants: the
 * responses as they come, ending with the stream, or with the reason
 * `signal` was aborted for (deadline, shutdown, the client gone).
 */
export async function* stepResponses(
  open: (out: StepOutput) => Watch,
  signal: AbortSignal,
): AsyncGenerator<StreamStepsResponse> {
  const queue: StreamStepsResponse[] = [];
  let ended: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const stream = open({
    message(response) {
      queue.push(response);
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
      const response = queue.shift();
      if (response) {
        yield response;
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
    stream.stop();
  }
}

/**
 * StreamSteps on the direct path (rpc/direct-stream.ts, which applies the
 * interceptors' rules around it): the same slot, gauge and watch as the
 * pipeline's handler, through {@link openStepStream}.
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
          out,
        );
    },
  };
}
