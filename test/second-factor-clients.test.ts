import { createClient } from "@connectrpc/connect";
import { AuthServiceClient } from "@harmony-dev/harmony-web-sdk/dist/gen/auth/v1/auth.client.js";
import { HrpcTransport } from "@harmony-dev/transport-hrpc";
import { Secret, TOTP } from "otpauth";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AccountService } from "../src/gen/cadenza/account/v1/account_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { cliInProcess } from "./helpers/cli.js";
import { createFakeClock } from "./helpers/clock.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { newUser, register, type TestUser } from "./helpers/flow.js";
import { type Answer, connectClient, type Shown, sdkClient } from "./helpers/generic-clients.js";
import { transportFactory } from "./helpers/server.js";

/**
 * The `totp` step rendered by clients that know nothing of it: Harmony's
 * published web SDK over hRPC (steps on a WebSocket, as Tempest drives it)
 * and a generic Connect client. The user fills each form field by its name
 * (`email`, `password`, `code`), whatever step it is on. TOTP time is the fake
 * clock's.
 */

const utf8 = (s: string) => new TextEncoder().encode(s);
const titles = (shown: Shown[]) => shown.map((s) => ("title" in s ? s.title : s.kind));

/** A user who logs in, giving `code()` wherever a form asks for a code. */
function loggingIn(user: TestUser, code: () => string) {
  return async (step: Shown): Promise<Answer> => {
    if (step.kind === "session") return "done";
    if (step.kind === "choice") {
      expect(step.options).toContain("login");
      return { choice: "login" };
    }
    return {
      values: step.fields.map((field) =>
        field.name === "email"
          ? user.email
          : field.name === "code"
            ? code()
            : // As Harmony clients send them: password fields as bytes.
              utf8(field.name === "password" ? user.password : ""),
      ),
    };
  };
}

describe.each(backends)("the totp step in generic clients, on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  const clock = createFakeClock(Date.now());
  const transports = transportFactory();

  beforeAll(async () => {
    database = await backend.open();
    ctx = await createAppContext(testConfig({ SHUTDOWN_GRACE: "1s" }), {
      db: database.db,
      clock,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    });
    server = await startServer(ctx);
  });
  afterEach(() => clock.reset());
  afterAll(async () => {
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  const totp = (secret: string) =>
    TOTP.generate({ secret: Secret.fromBase32(secret), timestamp: clock.now() });

  /** Registers over Connect and turns TOTP on through the account service. */
  async function enrolled() {
    const user = newUser();
    const auth = createClient(AuthService, transports.create("connect-json/http1", server.url));
    const { sessionToken } = await register(auth, user);
    const account = createClient(
      AccountService,
      transports.create("connect-json/http1", server.url),
    );
    const headers = { authorization: sessionToken };
    const { secret } = await account.beginTotpEnrollment({}, { headers });
    const { recoveryCodes } = await account.confirmTotpEnrollment(
      { code: totp(secret) },
      { headers },
    );
    clock.advance(30_000); // the confirming code is spent: the app shows the next one
    const left = async () => (await account.getSecondFactor({}, { headers })).recoveryCodesLeft;
    return { ...user, secret, recoveryCodes, left };
  }

  describe.each([
    ["Harmony's web SDK over hRPC", (url: string) => sdkClient(url)],
    ["a Connect client", (url: string) => connectClient(url, transports)],
  ] as const)("%s", (_, make) => {
    it("logs in with the password and then a TOTP code", async () => {
      const user = await enrolled();
      const shown = await make(server.url).run(loggingIn(user, () => totp(user.secret)));
      expect(titles(shown)).toEqual(["initial", "login", "totp", "session"]);
      expect(shown[2]).toEqual({
        kind: "form",
        title: "totp",
        fields: [{ name: "code", type: "text" }],
      });
      clock.advance(30_000);
    });

    it("logs in with a recovery code typed into the same form, which is then spent", async () => {
      const user = await enrolled();
      const recovery = user.recoveryCodes[0] ?? "";
      const shown = await make(server.url).run(loggingIn(user, () => recovery));
      expect(titles(shown)).toEqual(["initial", "login", "totp", "session"]);
      expect(await user.left()).toBe(9);
    });
  });

  it("answers a wrong code over hRPC with h.bad-second-factor, as the SDK reports it", async () => {
    const user = await enrolled();
    const sdk = new AuthServiceClient(new HrpcTransport({ baseUrl: server.url }));
    const { authId } = (await sdk.beginAuth({})).response;
    await sdk.nextStep({ authId, step: { oneofKind: "choice", choice: { choice: "login" } } });
    const field = (value: string | Uint8Array) =>
      typeof value === "string"
        ? { field: { oneofKind: "string" as const, string: value } }
        : { field: { oneofKind: "bytes" as const, bytes: value } };
    const form = (...values: (string | Uint8Array)[]) =>
      sdk.nextStep({ authId, step: { oneofKind: "form", form: { fields: values.map(field) } } });
    const step = (await form(user.email, utf8(user.password))).response.step?.step;
    expect(step?.oneofKind === "form" && step.form.title).toBe("totp");
    const right = totp(user.secret);
    const valid = [-30_000, 0, 30_000].map((d) =>
      TOTP.generate({ secret: Secret.fromBase32(user.secret), timestamp: clock.now() + d }),
    );
    const wrong = ["000000", "111111", "222222", "333333"].find((c) => !valid.includes(c));
    if (wrong === undefined) throw new Error("unreachable: four codes, three valid");
    await expect(form(wrong)).rejects.toMatchObject({ code: "h.bad-second-factor" });
    const done = (await form(right)).response.step?.step;
    expect(done?.oneofKind).toBe("session");
    await expect(form(right)).rejects.toMatchObject({ code: "h.bad-auth-id" });
    clock.advance(30_000);
  });

  it("the CLI turns a user's TOTP off through the admin API; the password then suffices", async () => {
    const user = await enrolled();
    const off = await cliInProcess(
      ["totp", "disable", user.username, "--server", server.internalUrl],
      {},
    );
    expect(off.stderr).not.toMatch(/error/i);
    expect(off.code).toBe(0);
    expect(off.stdout).toContain(`TOTP is off for user`);
    const shown = await sdkClient(server.url).run(loggingIn(user, () => "unused"));
    expect(titles(shown)).toEqual(["initial", "login", "session"]);
  });
});
