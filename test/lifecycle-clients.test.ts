import { createClient } from "@connectrpc/connect";
import { AuthServiceClient } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.client.js";
import type { AuthStep as SdkAuthStep } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.js";
import { HrpcTransport } from "@harmony-dev/transport-hrpc";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { newUser, register } from "./helpers/flow.js";
import { transportFactory } from "./helpers/server.js";
import { startSmtpServer } from "./helpers/smtp.js";

// The Harmony SDK's transport uses the browser's WebSocket; Node 20 has none.
(globalThis as { WebSocket?: unknown }).WebSocket = WebSocket;

/**
 * Password reset and account deletion driven by clients that render steps
 * generically, as Harmony's do: they know nothing of these flows, only how to
 * show a choice (the user picks an option) and a form (the user fills each
 * field by its name and type). The "user" here picks by intent and reads
 * codes from the mailbox.
 */

/** A step as a generic client sees it, whichever SDK decoded it. */
type Shown =
  | { kind: "choice"; title: string; options: string[] }
  | { kind: "form"; title: string; fields: { name: string; type: string }[] }
  | { kind: "session" };

/** What the user does at a step: an option, the values of a form's fields, or stop. */
type Answer = { choice: string } | { values: (string | Uint8Array)[] } | "done";

interface GenericClient {
  /** Begins a flow and yields every step the stream shows, answering each with `answer`. */
  run(answer: (step: Shown) => Promise<Answer>): Promise<Shown[]>;
}

/** Harmony's published web SDK over hRPC (unary POSTs, steps on a WebSocket), as Tempest drives it. */
function sdkClient(baseUrl: string): GenericClient {
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
      await new Promise((r) => setTimeout(r, 20)); // Tempest opens the stream first
      await client.nextStep({ authId, step: { oneofKind: undefined } });
      await done;
      return shown;
    },
  };
}

/** cadenza's own generated Connect client, rendering steps the same generic way. */
function connectClient(
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

let database: TestDatabase;
let ctx: AppContext;
let server: RunningServer;
let smtp: Awaited<ReturnType<typeof startSmtpServer>>;
const transports = transportFactory();

beforeAll(async () => {
  smtp = await startSmtpServer();
  database = await pglite.open();
  ctx = await createAppContext(testConfig({ SMTP_URL: smtp.url, SHUTDOWN_GRACE: "1s" }), {
    db: database.db,
    hasher: fastHasher,
    logger: pino({ level: "silent" }),
    background: false,
  });
  server = await startServer(ctx);
});
afterAll(async () => {
  transports.closeAll();
  await server?.close();
  await ctx?.close();
  await database?.close();
  await smtp?.close();
});

const utf8 = (s: string) => new TextEncoder().encode(s);

/**
 * A user who wants `intent` done: at each choice the option that leads there,
 * at each form what its fields ask for, by name. At the success step they go
 * back to the start and log in with `then` (so the flow ends in a session,
 * and the stream ends as Harmony clients expect).
 */
function user(
  intent: "reset-password" | "delete-user",
  email: string,
  then: { email: string; password: string },
  newPassword = "",
) {
  let done = false;
  return async (step: Shown): Promise<Answer> => {
    if (step.kind === "session") return "done";
    if (step.kind === "choice") {
      if (step.title === "success") {
        done = true;
        return { choice: "back-to-initial" };
      }
      const wanted = done ? "login" : step.options.includes(intent) ? intent : "other-options";
      expect(step.options).toContain(wanted);
      return { choice: wanted };
    }
    if (done) return { values: [then.email, utf8(then.password)] };
    const values: (string | Uint8Array)[] = [];
    for (const field of step.fields) {
      const value =
        field.name === "email"
          ? email
          : field.name === "token"
            ? ((await smtp.next(email)).code ?? "")
            : field.name === "new-password"
              ? newPassword
              : "";
      // As Harmony clients send them: password fields as bytes, the rest as strings.
      values.push(field.type === "password" || field.type === "new-password" ? utf8(value) : value);
    }
    return { values };
  };
}

describe.each([
  ["Harmony's web SDK over hRPC", (url: string) => sdkClient(url)],
  ["a Connect client", (url: string) => connectClient(url, transports)],
] as const)("%s, rendering steps generically", (_, make) => {
  it("resets a password", async () => {
    const account = newUser();
    await register(
      createClient(AuthService, transports.create("connect-json/http1", server.url)),
      account,
    );
    const after = { email: account.email, password: "reset by a generic client" };
    const shown = await make(server.url).run(
      user("reset-password", account.email, after, after.password),
    );
    expect(shown.map((s) => ("title" in s ? s.title : s.kind))).toEqual([
      "initial",
      "other-options",
      "reset-password-send-token",
      "reset-password-input-token",
      "success",
      "initial",
      "login",
      "session",
    ]);
  });

  it("deletes an account", async () => {
    const account = newUser();
    const { userId } = await register(
      createClient(AuthService, transports.create("connect-json/http1", server.url)),
      account,
    );
    const other = newUser();
    await register(
      createClient(AuthService, transports.create("connect-json/http1", server.url)),
      other,
    );
    const shown = await make(server.url).run(user("delete-user", account.email, other));
    expect(shown.map((s) => ("title" in s ? s.title : s.kind))).toEqual([
      "initial",
      "other-options",
      "delete-user-send-token",
      "delete-user-input-token",
      "success",
      "initial",
      "login",
      "session",
    ]);
    const { rows } = await database.db.query("SELECT 1 FROM users WHERE id = $1", [userId]);
    expect(rows).toEqual([]);
  });
});
