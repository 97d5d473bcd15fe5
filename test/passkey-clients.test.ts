import { createClient } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AccountService } from "../src/gen/cadenza/account/v1/account_pb.js";
import { PasskeyService } from "../src/gen/cadenza/passkey/v1/passkey_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { cliInProcess } from "./helpers/cli.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { choose, newUser, register, submitForm, type TestUser } from "./helpers/flow.js";
import { type Answer, connectClient, type Shown, sdkClient } from "./helpers/generic-clients.js";
import { transportFactory } from "./helpers/server.js";
import { createSoftAuthenticator } from "./helpers/soft-authenticator.js";

/**
 * Passkeys on, and a user who has one: clients that know nothing of them
 * (Harmony's web SDK over hRPC, as Tempest drives it, and a generic Connect
 * client) see exactly Harmony's steps and log in with the password, while a
 * client that announces the feature gets the passkey step over the real
 * server. Operators list and remove passkeys with the CLI.
 */

const ORIGIN = "https://chat.example.org";
const utf8 = (s: string) => new TextEncoder().encode(s);

/** A generic client's user: picks login, fills each field by its name. */
function loggingIn(user: TestUser) {
  return async (step: Shown): Promise<Answer> => {
    if (step.kind === "session") return "done";
    if (step.kind === "choice") return { choice: "login" };
    return {
      values: step.fields.map((f) => (f.name === "email" ? user.email : utf8(user.password))),
    };
  };
}

describe.each(backends)("passkeys beside generic clients, on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  const transports = transportFactory();
  let user: TestUser & { username: string; passkeyId: string };
  let soft: ReturnType<typeof createSoftAuthenticator>;

  beforeAll(async () => {
    database = await backend.open();
    ctx = await createAppContext(
      testConfig({ SERVER_ID: "chat.example.org:443", SHUTDOWN_GRACE: "1s" }),
      {
        db: database.db,
        hasher: fastHasher,
        logger: pino({ level: "silent" }),
        background: false,
      },
    );
    server = await startServer(ctx);
    // A user with a passkey, added over the wire.
    const base = newUser();
    const transport = transports.create("connect-json/http1", server.url);
    const { sessionToken } = await register(createClient(AuthService, transport), base);
    const account = createClient(AccountService, transport);
    const headers = { authorization: sessionToken };
    const { optionsJson } = await account.beginPasskeyRegistration(
      { password: base.password },
      { headers },
    );
    soft = createSoftAuthenticator();
    const { passkey } = await account.finishPasskeyRegistration(
      { responseJson: soft.register(optionsJson, { origin: ORIGIN }), name: "Phone" },
      { headers },
    );
    user = { ...base, passkeyId: passkey?.passkeyId ?? "" };
  });
  afterAll(async () => {
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  describe.each([
    ["Harmony's web SDK over hRPC", (url: string) => sdkClient(url)],
    ["a generic Connect client", (url: string) => connectClient(url, transports)],
  ] as const)("%s", (_, make) => {
    it("sees exactly Harmony's steps, and logs in with the password", async () => {
      const shown = await make(server.url).run(loggingIn(user));
      expect(shown).toEqual([
        { kind: "choice", title: "initial", options: ["login", "register", "other-options"] },
        {
          kind: "form",
          title: "login",
          fields: [
            { name: "email", type: "email" },
            { name: "password", type: "password" },
          ],
        },
        { kind: "session" },
      ]);
    });
  });

  it("gives a client that announces passkeys from a listed origin the passkey step, over every protocol", async () => {
    for (const protocol of ["connect-json/http1", "grpc-web/http1", "grpc/http2"] as const) {
      const transport = transports.create(protocol, server.url);
      const auth = createClient(AuthService, transport);
      const { authId } = await auth.beginAuth(
        {},
        { headers: { "cadenza-client-features": "passkey", origin: ORIGIN } },
      );
      const initial = await auth.nextStep({ authId });
      expect(initial.step?.step.case === "choice" && initial.step.step.value.options).toContain(
        "passkey",
      );
      await choose(auth, authId, "passkey");
      const { optionsJson } = await createClient(PasskeyService, transport).getSignInOptions({
        authId,
      });
      const res = await submitForm(auth, authId, [
        {
          field: {
            case: "bytes",
            value: utf8(soft.assert(optionsJson, { origin: ORIGIN })),
          },
        },
      ]);
      expect(res.step?.step.case).toBe("session");
    }
  });

  it("the CLI lists a user's passkeys and removes them", async () => {
    const cli = (...args: string[]) => cliInProcess([...args, "--server", server.internalUrl], {});
    const shown = await cli("users", "show", user.username);
    expect(shown.stdout).toMatch(/passkeys {4}1/);
    const listed = await cli("passkeys", "list", user.username);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(`${user.passkeyId}  Phone  added `);
    const removed = await cli("passkeys", "remove", user.username);
    expect(removed.stderr).not.toMatch(/error/i);
    expect(removed.stdout).toContain("removed 1 passkey(s)");
    const after = await cli("passkeys", "list", user.username, "--json");
    expect(JSON.parse(after.stdout)).toEqual([]);
  });
});
