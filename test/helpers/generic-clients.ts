import { createClient } from "@connectrpc/connect";
import { AuthServiceClient } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.client.js";
import type { AuthStep as SdkAuthStep } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.js";
import { HrpcTransport } from "@harmony-dev/transport-hrpc";
import { WebSocket } from "ws";
import { AuthService } from "../../src/gen/protocol/auth/v1/auth_pb.js";
import type { transportFactory } from "./server.js";

// The Harmony SDK's transport uses the browser's WebSocket; Node 20 has none.
(globalThis as { WebSocket?: unknown }).WebSocket = WebSocket;

/**
 * Clients that render auth steps generically, as Harmony's do: they know
 * nothing of any flow, only how to show a choice (the user picks an option)
 * and a form (the user fills each field by its name and type).
 */

/** A step as a generic client sees it, whichever SDK decoded it. */
export type Shown =
  | { kind: "choice"; title: string; options: string[] }
  | { kind: "form"; title: string; fields: { name: string; type: string }[] }
  | { kind: "session" };

/** What the user does at a step: an option, the values of a form's fields, or stop. */
export type Answer = { choice: string } | { values: (string | Uint8Array)[] } | "done";

export interface GenericClient {
  /** Begins a flow and yields every step the stream shows, answering each with `answer`. */
  run(answer: (step: Shown) => Promise<Answer>): Promise<Shown[]>;
}

/** Harmony's published web SDK over hRPC (unary POSTs, steps on a WebSocket), as Tempest drives it. */
export function sdkClient(baseUrl: string): GenericClient {
  const client = new AuthServiceClient(new HrpcTransport({ baseUrl }));
  const shownOf = (step: SdkAuthStep): Shown => {
    const s = step.step;
    if (s.oneofKind === "choice")
      return { kind: "choice", title: s.choice.title, options: s.choice.options };
    if (s.oneofKind === "form") {
      return {
        kind: "form",
        title: s.form.title,
        fields: s.form.fields.map((f) => ({ name: f.name, type: f.type })),
      };
    }
    return { kind: "session" };
  };
  return {
    async run(answer) {
      const { authId } = (await client.beginAuth({})).response;
      const call = client.streamSteps({ authId });
      const shown: Shown[] = [];
      const done = (async () => {
        for await (const res of call.responses) {
          if (!res.step) continue;
          const step = shownOf(res.step);
          shown.push(step);
          const a = await answer(step);
          if (a === "done" || step.kind === "session") return;
          await client.nextStep({
            authId,
            step:
              "choice" in a
                ? { oneofKind: "choice", choice: { choice: a.choice } }
                : {
                    oneofKind: "form",
                    form: {
                      fields: a.values.map((v) =>
                        typeof v === "string"
                          ? { field: { oneofKind: "string" as const, string: v } }
                          : { field: { oneofKind: "bytes" as const, bytes: v } },
                      ),
                    },
                  },
          });
        }
      })();
      // Tempest opens the stream, then asks for the first step. Whether the
      // stream is attached by then does not matter: it is sent the steps
      // shown before it attached, and every later one is shown only after
      // the stream delivered the one before.
      await client.nextStep({ authId, step: { oneofKind: undefined } });
      await done;
      return shown;
    },
  };
}

/** cadenza's own generated Connect client, rendering steps the same generic way. */
export function connectClient(
  baseUrl: string,
  transports: ReturnType<typeof transportFactory>,
): GenericClient {
  const client = createClient(AuthService, transports.create("connect-json/http1", baseUrl));
  return {
    async run(answer) {
      const { authId } = await client.beginAuth({});
      const shown: Shown[] = [];
      let res = await client.nextStep({ authId });
      for (;;) {
        const s = res.step?.step;
        const step: Shown =
          s?.case === "choice"
            ? { kind: "choice", title: s.value.title, options: s.value.options }
            : s?.case === "form"
              ? {
                  kind: "form",
                  title: s.value.title,
                  fields: s.value.fields.map((f) => ({ name: f.name, type: f.type })),
                }
              : { kind: "session" };
        shown.push(step);
        const a = await answer(step);
        if (a === "done" || step.kind === "session") return shown;
        res = await client.nextStep(
          "choice" in a
            ? { authId, step: { case: "choice", value: { choice: a.choice } } }
            : {
                authId,
                step: {
                  case: "form",
                  value: {
                    fields: a.values.map((v) =>
                      typeof v === "string"
                        ? { field: { case: "string", value: v } }
                        : { field: { case: "bytes", value: v } },
                    ),
                  },
                },
              },
        );
      }
    },
  };
}
