import type { Client } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import type { AuthService } from "../../src/gen/protocol/auth/v1/auth_pb.js";
import { choiceRequest, type FieldView, formRequest } from "./fields.js";
import { CLIENT_FEATURES_HEADER } from "./passkeys.js";
import { type Problem, problemOf } from "./problems.js";
import { type StepView, stepView } from "./steps.js";

/** What a flow tells the page. */
export interface FlowHandlers {
  /** Each step the server shows, in order, with the flow to answer it; the last is the session. */
  onStep(view: StepView, flow: Flow): void;
  /** The stream ended before a session: the flow expired, or the stream failed (`problem`). */
  onEnd(problem: Problem | undefined): void;
}

/** A flow in progress: answer its current step. Each call's errors are the caller's to show. */
export interface Flow {
  readonly authId: string;
  choose(option: string): Promise<void>;
  submit(fields: readonly FieldView[], values: readonly string[]): Promise<void>;
  back(): Promise<void>;
  /** Stops following the stream (the page moves on). */
  close(): void;
}

/**
 * Begins an auth flow and follows it the way Harmony's own web client does:
 * BeginAuth, then StreamSteps, then NextStep without a step ("what is the
 * current step?"). Every step is rendered from the stream, never from a
 * NextStep or StepBack answer, so the page shows exactly what every other
 * client of the flow sees; the calls only report errors.
 */
export async function beginFlow(
  auth: Client<typeof AuthService>,
  handlers: FlowHandlers,
  /** Steps of cadenza's own the page can render (`passkey`), announced at BeginAuth. */
  features: readonly string[] = [],
): Promise<Flow> {
  const { authId } = await auth.beginAuth(
    {},
    features.length === 0 ? {} : { headers: { [CLIENT_FEATURES_HEADER]: features.join(", ") } },
  );
  const stop = new AbortController();

  /** Sends one answer. A race lost to another call on this flow just shows the current step again. */
  const send = async (call: () => Promise<unknown>) => {
    try {
      await call();
    } catch (err) {
      if (problemOf(err).code !== Code.Aborted) throw err;
      await auth.nextStep({ authId });
    }
  };
  const flow: Flow = {
    authId,
    choose: (option) => send(() => auth.nextStep(choiceRequest(authId, option))),
    submit: (fields, values) => send(() => auth.nextStep(formRequest(authId, fields, values))),
    back: () => send(() => auth.stepBack({ authId })),
    close: () => stop.abort(),
  };

  const follow = async () => {
    try {
      for await (const res of auth.streamSteps({ authId }, { signal: stop.signal })) {
        if (!res.step) continue;
        const view = stepView(res.step);
        handlers.onStep(view, flow);
        if (view.kind === "session") return;
      }
      if (!stop.signal.aborted) handlers.onEnd(undefined);
    } catch (err) {
      if (!stop.signal.aborted) handlers.onEnd(problemOf(err));
    }
  };
  follow().catch(() => {});

  try {
    await auth.nextStep({ authId });
  } catch (err) {
    stop.abort();
    throw err;
  }
  return flow;
}
