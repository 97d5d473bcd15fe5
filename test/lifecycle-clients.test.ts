import { createClient } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { newUser, register } from "./helpers/flow.js";
import { type Answer, connectClient, type Shown, sdkClient } from "./helpers/generic-clients.js";
import { transportFactory } from "./helpers/server.js";
import { startSmtpServer } from "./helpers/smtp.js";

/**
 * Password reset and account deletion driven by clients that render steps
 * generically, as Harmony's do: they know nothing of these flows, only how to
 * show a choice (the user picks an option) and a form (the user fills each
 * field by its name and type). The "user" here picks by intent and reads
 * codes from the mailbox.
 */

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
