import { randomBytes } from "node:crypto";
import { Code, createClient, createRouterTransport } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type FlowPolicy, initialStateFor, viewOf } from "../src/auth/flow-machine.js";
import { loadConfig } from "../src/config.js";
import type { StreamAccountEventsResponse } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { PasskeyService } from "../src/gen/cadenza/passkey/v1/passkey_pb.js";
import type { AuthStep } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { connectRoutes } from "../src/server/build-app.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import {
  bytes,
  choose,
  newUser,
  openForm,
  register,
  submitForm,
  type TestUser,
  text,
} from "./helpers/flow.js";
import { createSoftAuthenticator } from "./helpers/soft-authenticator.js";

/**
 * Passkeys on the server, end to end through the public services: the
 * option offered only to a client that announces it, registration through
 * the account service, sign-in through the flow's `passkey` step with the
 * options from PasskeyService, and every way an assertion can be wrong. The
 * browser is a software authenticator (test/helpers/soft-authenticator.ts)
 * that signs real WebAuthn answers; test/web-passkey.test.ts does the same
 * with Chromium's virtual authenticator.
 */

const ORIGIN = "https://chat.example.org";
const RP_ID = "chat.example.org";
const FEATURES = "cadenza-client-features";
const announced = { headers: { [FEATURES]: "passkey", origin: ORIGIN } };
const auth = (token: string) => ({ headers: { authorization: token } });
const titleOf = (res: { step?: AuthStep | undefined }) =>
  res.step?.step.case === "session" ? "session" : res.step?.step.value?.title;
const optionsOf = (res: { step?: AuthStep | undefined }) =>
  res.step?.step.case === "choice" ? res.step.step.value.options : undefined;

describe.each(backends)("passkeys on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;
  let passkey: ReturnType<typeof createClient<typeof PasskeyService>>;
  const logs: string[] = [];

  beforeAll(async () => {
    database = await backend.open();
    app = await createTestApp(database.db, {
      // The RP ID and origin derive from it: chat.example.org, https://chat.example.org.
      env: { SERVER_ID: "chat.example.org:443", FLOW_TTL: "15m" },
      logger: pino({ level: "debug" }, { write: (line: string) => logs.push(line) }),
    });
    const routes = connectRoutes(app.ctx);
    passkey = createClient(
      PasskeyService,
      createRouterTransport(routes.routes, { router: { interceptors: routes.interceptors } }),
    );
  });
  afterEach(() => app.clock.reset());
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  const audits = (event: string) =>
    logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.audit === event);

  const head = async () => (await app.homeserver.getUsers({})).cursor;
  async function events(after: bigint, n: number) {
    const abort = new AbortController();
    const got: StreamAccountEventsResponse[] = [];
    for await (const e of app.homeserver.streamAccountEvents({ after }, { signal: abort.signal })) {
      got.push(e);
      if (got.length === n) break;
    }
    abort.abort();
    return got;
  }

  interface WithPasskey extends TestUser {
    readonly userId: bigint;
    readonly sessionToken: string;
    readonly soft: ReturnType<typeof createSoftAuthenticator>;
    readonly passkeyId: string;
  }

  /** A new account with one passkey, added through the account service. */
  async function withPasskey(name = "My laptop"): Promise<WithPasskey> {
    const user = newUser();
    const session = await register(app.client, user);
    const soft = createSoftAuthenticator();
    const { optionsJson } = await app.account.beginPasskeyRegistration(
      { password: user.password },
      auth(session.sessionToken),
    );
    const { passkey: added } = await app.account.finishPasskeyRegistration(
      { responseJson: soft.register(optionsJson, { origin: ORIGIN }), name },
      auth(session.sessionToken),
    );
    return { ...user, ...session, soft, passkeyId: added?.passkeyId ?? "" };
  }

  /** A flow of an announcing client, on its passkey step, with fresh options. */
  async function atPasskeyStep(): Promise<{ authId: string; options: string }> {
    const { authId } = await app.client.beginAuth({}, announced);
    expect(optionsOf(await app.client.nextStep({ authId }))).toContain("passkey");
    const res = await choose(app.client, authId, "passkey");
    expect(res.step?.step.case === "form" && res.step.step.value).toEqual(
      expect.objectContaining({
        title: "passkey",
        fields: [expect.objectContaining({ name: "assertion", type: "cadenza.passkey-assertion" })],
      }),
    );
    expect(res.step?.canGoBack).toBe(true);
    const { optionsJson } = await passkey.getSignInOptions({ authId });
    return { authId, options: optionsJson };
  }

  const answer = (authId: string, assertion: string) =>
    submitForm(app.client, authId, [bytes(assertion)]);

  describe("the passkey option", () => {
    it.each([
      ["no header, no origin (every Harmony client)", {}],
      ["the header without an Origin (not a browser)", { [FEATURES]: "passkey" }],
      [
        "the header from an origin not in WEBAUTHN_ORIGINS",
        { [FEATURES]: "passkey", origin: "https://elsewhere.example.org" },
      ],
      ["a listed origin without the header", { origin: ORIGIN }],
      ["another feature only", { [FEATURES]: "qr-login", origin: ORIGIN }],
    ])("is not offered for %s: the initial step is Harmony's own", async (_, headers) => {
      const { authId } = await app.client.beginAuth({}, { headers });
      const res = await app.client.nextStep({ authId });
      expect(res.step?.step.value).toEqual(
        expect.objectContaining({
          title: "initial",
          options: ["login", "register", "other-options"],
        }),
      );
      await expectRpcError(
        choose(app.client, authId, "passkey"),
        Code.InvalidArgument,
        "h.bad-auth-choice",
      );
    });

    it("is offered to a client that announces it from a listed origin, and kept for the flow's life", async () => {
      const { authId } = await app.client.beginAuth(
        {},
        { headers: { [FEATURES]: " Passkey , x", origin: ORIGIN } },
      );
      expect(optionsOf(await app.client.nextStep({ authId }))).toEqual([
        "login",
        "passkey",
        "register",
        "other-options",
      ]);
      // Back from the passkey step, and round through other options: still offered.
      await choose(app.client, authId, "passkey");
      expect(optionsOf(await app.client.stepBack({ authId }))).toContain("passkey");
      await choose(app.client, authId, "other-options");
      expect(optionsOf(await app.client.stepBack({ authId }))).toContain("passkey");
    });

    it("is not offered with PASSKEYS=off, whatever a flow recorded", () => {
      const policy: FlowPolicy = {
        registration: true,
        invites: false,
        verifyEmail: false,
        email: false,
        passkeys: false,
      };
      const view = viewOf(initialStateFor(["passkey"]), policy);
      expect(view.kind === "choice" && view.options).toEqual([
        "login",
        "register",
        "other-options",
      ]);
      expect(loadConfig({ PASSKEYS: "off" }).passkeys).toBeUndefined();
    });
  });

  describe("configuration", () => {
    it.each([
      [{ SERVER_ID: "chat.example.org:443" }, "chat.example.org", ["https://chat.example.org"]],
      [
        { SERVER_ID: "chat.example.org:2289" },
        "chat.example.org",
        ["https://chat.example.org:2289"],
      ],
      [{ PORT: "2289" }, "localhost", ["http://localhost:2289"]],
      [
        {
          SERVER_ID: "chat.example.org:443",
          WEBAUTHN_RP_ID: "Example.org",
          WEBAUTHN_ORIGINS: "https://example.org,https://chat.example.org",
        },
        "example.org",
        ["https://example.org", "https://chat.example.org"],
      ],
    ])("derives the RP ID and origins: %j", (env, rpId, origins) => {
      expect(loadConfig(env).passkeys).toEqual({ rpId, origins });
    });

    it("offers none for an IP SERVER_ID (browsers refuse IP addresses), unless WEBAUTHN_RP_ID says", () => {
      expect(loadConfig({ SERVER_ID: "127.0.0.1:2289" }).passkeys).toBeUndefined();
      expect(
        loadConfig({
          SERVER_ID: "127.0.0.1:2289",
          WEBAUTHN_RP_ID: "localhost",
          WEBAUTHN_ORIGINS: "http://localhost:2289",
        }).passkeys,
      ).toEqual({ rpId: "localhost", origins: ["http://localhost:2289"] });
    });

    it.each([
      [{ WEBAUTHN_RP_ID: "10.0.0.1" }, "WEBAUTHN_RP_ID=10.0.0.1: 10.0.0.1 is not a domain name"],
      [{ WEBAUTHN_RP_ID: "https://example.org" }, "is not a domain name"],
      [{ WEBAUTHN_ORIGINS: "https://example.org/path" }, "is not an origin"],
      [
        { SERVER_ID: "chat.example.org:443", WEBAUTHN_ORIGINS: "https://other.example.com" },
        "neither the RP ID chat.example.org nor a subdomain of it",
      ],
      [
        { SERVER_ID: "chat.example.org:443", WEBAUTHN_ORIGINS: "http://chat.example.org" },
        "on http:// only for localhost",
      ],
    ])("refuses %j at start-up", (env, problem) => {
      expect(() => loadConfig(env)).toThrow(problem);
    });
  });

  describe("registration", () => {
    it("asks for the password, then answers creation options bound to this server and account", async () => {
      const user = newUser();
      const { sessionToken, userId } = await register(app.client, user);
      const wrong = await expectRpcError(
        app.account.beginPasskeyRegistration({ password: "not it" }, auth(sessionToken)),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      expect(wrong).toBe("wrong password");
      expect(audits("passkey.refused").at(-1)).toMatchObject({
        reason: "bad-password",
        userId: `${userId}`,
      });

      const { optionsJson } = await app.account.beginPasskeyRegistration(
        { password: user.password },
        auth(sessionToken),
      );
      const options = JSON.parse(optionsJson);
      expect(options).toMatchObject({
        rp: { id: RP_ID, name: RP_ID },
        user: { name: user.email, displayName: user.username },
        attestation: "none",
        excludeCredentials: [],
        authenticatorSelection: { residentKey: "required", userVerification: "required" },
      });
      expect(options.challenge).toMatch(/^[A-Za-z0-9_-]{43}$/);
      // The user handle is no personal data: 32 bytes, not the user ID.
      expect(options.user.id).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(options.pubKeyCredParams.map((p: { alg: number }) => p.alg)).toContain(-7);
    });

    it("on an account with TOTP on, needs a current code as well, and spends it", async () => {
      const { TOTP, Secret } = await import("otpauth");
      const user = newUser();
      const { sessionToken, userId } = await register(app.client, user);
      const { secret } = await app.account.beginTotpEnrollment({}, auth(sessionToken));
      const codeAt = (at: number) =>
        TOTP.generate({ secret: Secret.fromBase32(secret), timestamp: at });
      await app.account.confirmTotpEnrollment(
        { code: codeAt(app.clock.now()) },
        auth(sessionToken),
      );
      app.clock.advance(30_000);

      const needed = await expectRpcError(
        app.account.beginPasskeyRegistration({ password: user.password }, auth(sessionToken)),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
      expect(needed).toContain("TOTP is on for this account");
      const valid = [-1, 0, 1].map((k) => codeAt(app.clock.now() + k * 30_000));
      const wrongCode = ["000000", "111111", "222222", "333333"].find((c) => !valid.includes(c));
      await expectRpcError(
        app.account.beginPasskeyRegistration(
          { password: user.password, code: wrongCode ?? "" },
          auth(sessionToken),
        ),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
      expect(audits("passkey.refused").at(-1)).toMatchObject({
        reason: "bad-second-factor",
        userId: `${userId}`,
      });
      // A wrong password with the right code spends nothing.
      const code = codeAt(app.clock.now());
      await expectRpcError(
        app.account.beginPasskeyRegistration({ password: "not it", code }, auth(sessionToken)),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      expect(audits("passkey.refused").at(-1)).toMatchObject({ reason: "bad-password" });
      // The right password and code: options; the code is spent, so it cannot be used again.
      const { optionsJson } = await app.account.beginPasskeyRegistration(
        { password: user.password, code },
        auth(sessionToken),
      );
      expect(JSON.parse(optionsJson).challenge).toMatch(/^[A-Za-z0-9_-]{43}$/);
      const replayed = await expectRpcError(
        app.account.beginPasskeyRegistration({ password: user.password, code }, auth(sessionToken)),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
      expect(replayed).toContain("already used");
    });

    it("stores the verified passkey with its name, lists it, and emits passkeys_changed", async () => {
      const user = newUser();
      const { sessionToken, userId } = await register(app.client, user);
      const from = await head();
      const soft = createSoftAuthenticator();
      const { optionsJson } = await app.account.beginPasskeyRegistration(
        { password: user.password },
        auth(sessionToken),
      );
      const { passkey: added } = await app.account.finishPasskeyRegistration(
        { responseJson: soft.register(optionsJson, { origin: ORIGIN }), name: "  Work phone " },
        auth(sessionToken),
      );
      expect(added).toMatchObject({ passkeyId: soft.ids[0], name: "Work phone", backedUp: false });
      expect(added?.lastUsedAt).toBeUndefined();
      const { passkeys } = await app.account.listPasskeys({}, auth(sessionToken));
      expect(passkeys.map((p) => [p.passkeyId, p.name])).toEqual([[soft.ids[0], "Work phone"]]);
      const [event] = await events(from, 1);
      expect(event?.userId).toBe(userId);
      expect(event?.event).toEqual({
        case: "passkeysChanged",
        value: expect.objectContaining({ added: true, passkeyCount: 1, byOperator: false }),
      });
      expect(audits("passkey.added").at(-1)).toMatchObject({ userId: `${userId}` });

      // The challenge was used: the same answer again finds none.
      await expectRpcError(
        app.account.finishPasskeyRegistration(
          { responseJson: soft.register(optionsJson, { origin: ORIGIN }), name: "" },
          auth(sessionToken),
        ),
        Code.FailedPrecondition,
        "h.passkey-not-registering",
      );
      // The next ceremony tells the authenticator which passkey it already holds.
      const again = JSON.parse(
        (
          await app.account.beginPasskeyRegistration(
            { password: user.password },
            auth(sessionToken),
          )
        ).optionsJson,
      );
      expect(again.excludeCredentials.map((c: { id: string }) => c.id)).toEqual([soft.ids[0]]);
      // A second passkey without a name gets one.
      const { passkey: second } = await app.account.finishPasskeyRegistration(
        { responseJson: soft.register(JSON.stringify(again), { origin: ORIGIN }), name: "" },
        auth(sessionToken),
      );
      expect(second?.name).toBe("Passkey");
      expect(
        (await app.admin.getUser({ user: { case: "userId", value: userId } })).user?.passkeyCount,
      ).toBe(2);
    });

    it.each([
      ["another origin", { origin: "https://phish.example.net" }, "h.bad-passkey-registration"],
      [
        "no user verification",
        { origin: ORIGIN, userVerified: false },
        "h.bad-passkey-registration",
      ],
      [
        "another challenge",
        { origin: ORIGIN, challenge: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" },
        "h.bad-passkey-registration",
      ],
    ])("refuses a registration from %s", async (_, ceremony, identifier) => {
      const user = newUser();
      const { sessionToken } = await register(app.client, user);
      const { optionsJson } = await app.account.beginPasskeyRegistration(
        { password: user.password },
        auth(sessionToken),
      );
      const soft = createSoftAuthenticator();
      await expectRpcError(
        app.account.finishPasskeyRegistration(
          { responseJson: soft.register(optionsJson, ceremony), name: "x" },
          auth(sessionToken),
        ),
        Code.InvalidArgument,
        identifier,
      );
      expect((await app.account.listPasskeys({}, auth(sessionToken))).passkeys).toEqual([]);
    });

    it("refuses what is not a registration, a bad name, and a ceremony of another session", async () => {
      const user = newUser();
      const first = await register(app.client, user);
      const second = await submitForm(app.client, await openForm(app.client, "login"), [
        text(user.email),
        bytes(user.password),
      ]);
      const otherToken =
        second.step?.step.case === "session" ? second.step.step.value.sessionToken : "";
      const { optionsJson } = await app.account.beginPasskeyRegistration(
        { password: user.password },
        auth(first.sessionToken),
      );
      const soft = createSoftAuthenticator();
      const response = soft.register(optionsJson, { origin: ORIGIN });
      await expectRpcError(
        app.account.finishPasskeyRegistration(
          { responseJson: "{not json", name: "" },
          auth(first.sessionToken),
        ),
        Code.InvalidArgument,
        "h.bad-passkey-registration",
      );
      await expectRpcError(
        app.account.finishPasskeyRegistration(
          { responseJson: response, name: "x".repeat(65) },
          auth(first.sessionToken),
        ),
        Code.InvalidArgument,
        "h.invalid-passkey-name",
      );
      // Bound to the session that began it: another session of the same user has none.
      await expectRpcError(
        app.account.finishPasskeyRegistration(
          { responseJson: response, name: "" },
          auth(otherToken),
        ),
        Code.FailedPrecondition,
        "h.passkey-not-registering",
      );
      // Expired after five minutes.
      app.clock.advance(5 * 60_000 + 1);
      await expectRpcError(
        app.account.finishPasskeyRegistration(
          { responseJson: response, name: "" },
          auth(first.sessionToken),
        ),
        Code.FailedPrecondition,
        "h.passkey-not-registering",
      );
      await expectRpcError(
        app.account.listPasskeys({}, auth("not a session")),
        Code.Unauthenticated,
        "h.blank-session",
      );
    });
  });

  describe("sign-in", () => {
    it("signs in with a passkey: a session, with the passkey's last use recorded", async () => {
      const user = await withPasskey();
      const { authId, options } = await atPasskeyStep();
      const parsed = JSON.parse(options);
      expect(parsed).toMatchObject({ rpId: RP_ID, userVerification: "required" });
      expect(parsed.allowCredentials ?? []).toEqual([]);
      const res = await answer(authId, user.soft.assert(options, { origin: ORIGIN }));
      expect(titleOf(res)).toBe("session");
      const session = res.step?.step.case === "session" ? res.step.step.value : undefined;
      expect(session?.userId).toBe(user.userId);
      await app.client.checkLoggedIn({}, auth(session?.sessionToken ?? ""));
      const [listed] = (await app.account.listPasskeys({}, auth(user.sessionToken))).passkeys;
      expect(listed?.lastUsedAt).toBeDefined();
      expect(audits("login.succeeded").at(-1)).toMatchObject({
        method: "passkey",
        userId: `${user.userId}`,
      });
      // The flow is spent.
      await expectRpcError(
        passkey.getSignInOptions({ authId }),
        Code.FailedPrecondition,
        "h.bad-auth-id",
      );
    });

    it("takes the assertion as a string too, and needs no second factor after it", async () => {
      const user = await withPasskey();
      const { secret } = await app.account.beginTotpEnrollment({}, auth(user.sessionToken));
      const { TOTP, Secret } = await import("otpauth");
      await app.account.confirmTotpEnrollment(
        { code: TOTP.generate({ secret: Secret.fromBase32(secret), timestamp: app.clock.now() }) },
        auth(user.sessionToken),
      );
      // The password still asks for the code…
      const login = await openForm(app.client, "login");
      expect(
        titleOf(await submitForm(app.client, login, [text(user.email), bytes(user.password)])),
      ).toBe("totp");
      // …a passkey (user-verified) does not.
      const { authId, options } = await atPasskeyStep();
      const res = await submitForm(app.client, authId, [
        text(user.soft.assert(options, { origin: ORIGIN })),
      ]);
      expect(titleOf(res)).toBe("session");
    });

    /** How an assertion is wrong, how to make it, and the reason the audit line gives. */
    const wrongs: [
      string,
      (u: WithPasskey, options: string) => Promise<string> | string,
      string,
    ][] = [
      [
        "signed over another challenge",
        (u, o) =>
          u.soft.assert(o, { origin: ORIGIN, challenge: randomBytes(32).toString("base64url") }),
        "passkey-bad-challenge",
      ],
      [
        "from another origin (a phishing page)",
        (u, o) => u.soft.assert(o, { origin: "https://chat.example.org.evil.example" }),
        "passkey-bad-origin",
      ],
      [
        "without user verification",
        (u, o) => u.soft.assert(o, { origin: ORIGIN, userVerified: false }),
        "passkey-not-verified",
      ],
      [
        "of an unknown credential",
        (u, o) =>
          u.soft.assert(o, { origin: ORIGIN, credentialId: randomBytes(32).toString("base64url") }),
        "passkey-unknown-credential",
      ],
      [
        "whose counter went back (a cloned authenticator)",
        async (u, o) => {
          // A sign-in at counter 7 first, then an answer at 3.
          const first = await atPasskeyStep();
          expect(
            titleOf(
              await answer(
                first.authId,
                u.soft.assert(first.options, { origin: ORIGIN, counter: 7 }),
              ),
            ),
          ).toBe("session");
          return u.soft.assert(o, { origin: ORIGIN, counter: 3 });
        },
        "passkey-counter",
      ],
      [
        "answering options of another flow",
        async (u) => {
          const other = await atPasskeyStep();
          return u.soft.assert(other.options, { origin: ORIGIN });
        },
        "passkey-bad-challenge",
      ],
    ];

    it.each(wrongs)(
      "refuses an assertion %s with the one answer, leaving the flow on its step",
      async (_, make, reason) => {
        const user = await withPasskey();
        const { authId, options } = await atPasskeyStep();
        const bad = await make(user, options);
        const message = await expectRpcError(
          answer(authId, bad),
          Code.Unauthenticated,
          "h.bad-passkey",
        );
        expect(message).toBe(
          "this passkey was not accepted: try again, or go back and log in with your email and password",
        );
        expect(audits("login.failed").at(-1)).toMatchObject({
          reason,
        });
        // The flow is still there: fresh options, and a right answer signs in.
        const { optionsJson } = await passkey.getSignInOptions({ authId });
        const res = await answer(
          authId,
          user.soft.assert(optionsJson, { origin: ORIGIN, counter: 100 }),
        );
        expect(titleOf(res)).toBe("session");
      },
    );

    it("uses a challenge once: an assertion replayed is refused, on its flow and on another", async () => {
      const user = await withPasskey();
      const { authId, options } = await atPasskeyStep();
      const good = user.soft.assert(options, { origin: ORIGIN });
      // A wrong answer first uses the challenge up; the right one then finds none.
      await expectRpcError(
        answer(authId, good.replace(/"signature":"[^"]+"/, `"signature":"AAAA"`)),
        Code.Unauthenticated,
        "h.bad-passkey",
      );
      await expectRpcError(answer(authId, good), Code.Unauthenticated, "h.bad-passkey");
      // Nor does it sign in to another flow (whose challenge is another).
      const other = await atPasskeyStep();
      await expectRpcError(answer(other.authId, good), Code.Unauthenticated, "h.bad-passkey");
      const reasons = audits("login.failed")
        .slice(-3)
        .map((l) => l.reason);
      expect(reasons).toEqual([
        "passkey-not-verified",
        "passkey-no-challenge",
        "passkey-bad-challenge",
      ]);
      // And once used to sign in, the flow is spent.
      const fresh = await passkey.getSignInOptions({ authId: other.authId });
      const signedIn = user.soft.assert(fresh.optionsJson, { origin: ORIGIN });
      expect(titleOf(await answer(other.authId, signedIn))).toBe("session");
      await expectRpcError(
        answer(other.authId, signedIn),
        Code.FailedPrecondition,
        "h.bad-auth-id",
      );
    });

    it("signs in again and again with an authenticator that keeps no counter (0, as synced passkeys do)", async () => {
      const user = await withPasskey();
      for (let i = 0; i < 2; i++) {
        const { authId, options } = await atPasskeyStep();
        const res = await answer(authId, user.soft.assert(options, { origin: ORIGIN, counter: 0 }));
        expect(titleOf(res)).toBe("session");
      }
    });

    it("stores a credential once, whoever registers it; its counter moves forward only", async () => {
      const user = await withPasskey();
      const store = app.ctx.stores.passkeys;
      const [stored] = await store.list(app.ctx.db, user.userId);
      if (!stored) throw new Error("the passkey was not stored");
      expect(await store.insert(app.ctx.db, { ...stored, name: "again" })).toBe(false);
      expect(
        await store.recordUse(app.ctx.db, stored.credentialId, 5, false, app.clock.now()),
      ).toBe(true);
      expect(
        await store.recordUse(app.ctx.db, stored.credentialId, 5, false, app.clock.now()),
      ).toBe(false);
      expect(
        await store.recordUse(app.ctx.db, stored.credentialId, 0, false, app.clock.now()),
      ).toBe(false);
      expect(await store.recordUse(app.ctx.db, stored.credentialId, 6, true, app.clock.now())).toBe(
        true,
      );
    });

    it("answers options only on the passkey step of a live flow", async () => {
      const { authId } = await app.client.beginAuth({}, announced);
      await expectRpcError(
        passkey.getSignInOptions({ authId }),
        Code.FailedPrecondition,
        "h.no-passkey-step",
      );
      await expectRpcError(
        passkey.getSignInOptions({ authId: "" }),
        Code.InvalidArgument,
        "h.bad-auth-id",
      );
      await expectRpcError(
        passkey.getSignInOptions({ authId: "A".repeat(32) }),
        Code.NotFound,
        "h.bad-auth-id",
      );
      await choose(app.client, authId, "passkey");
      await passkey.getSignInOptions({ authId });
      // The challenge expires with the flow.
      app.clock.advance(15 * 60_000);
      await expectRpcError(
        passkey.getSignInOptions({ authId }),
        Code.FailedPrecondition,
        "h.bad-auth-id",
      );
    });

    it("reads a malformed assertion as a malformed form", async () => {
      const { authId } = await atPasskeyStep();
      await expectRpcError(answer(authId, "{}"), Code.InvalidArgument, "h.missing-form");
      await expectRpcError(
        submitForm(app.client, authId, [{ field: { case: "number", value: 1n } }]),
        Code.InvalidArgument,
        "h.missing-form",
      );
    });

    it("says a disabled account is disabled, after a valid assertion only", async () => {
      const user = await withPasskey();
      await app.admin.disableUser({ userId: user.userId });
      const { authId, options } = await atPasskeyStep();
      await expectRpcError(
        answer(authId, user.soft.assert(options, { origin: ORIGIN })),
        Code.PermissionDenied,
        "h.user-disabled",
      );
      await app.admin.enableUser({ userId: user.userId });
    });
  });

  describe("removal", () => {
    it("a user removes a passkey, which then signs in no more", async () => {
      const user = await withPasskey();
      const from = await head();
      await expectRpcError(
        app.account.deletePasskey({ passkeyId: "AAAA" }, auth(user.sessionToken)),
        Code.NotFound,
        "h.unknown-passkey",
      );
      await app.account.deletePasskey({ passkeyId: user.passkeyId }, auth(user.sessionToken));
      expect((await app.account.listPasskeys({}, auth(user.sessionToken))).passkeys).toEqual([]);
      const [event] = await events(from, 1);
      expect(event?.event).toEqual({
        case: "passkeysChanged",
        value: expect.objectContaining({ added: false, passkeyCount: 0, byOperator: false }),
      });
      const { authId, options } = await atPasskeyStep();
      await expectRpcError(
        answer(authId, user.soft.assert(options, { origin: ORIGIN })),
        Code.Unauthenticated,
        "h.bad-passkey",
      );
    });

    it("operators list and remove a user's passkeys; another user's stay", async () => {
      const user = await withPasskey("Old phone");
      const bystander = await withPasskey();
      const { passkeys } = await app.admin.listPasskeys({ userId: user.userId });
      expect(passkeys.map((p) => [p.passkeyId, p.name])).toEqual([[user.passkeyId, "Old phone"]]);
      await expectRpcError(app.admin.listPasskeys({ userId: 1n }), Code.NotFound, "h.unknown-user");
      // Another user's passkey cannot be removed through this one.
      expect(
        (await app.admin.deletePasskeys({ userId: user.userId, passkeyIds: [bystander.passkeyId] }))
          .passkeyIds,
      ).toEqual([]);
      const from = await head();
      expect(
        (await app.admin.deletePasskeys({ userId: user.userId, passkeyIds: [] })).passkeyIds,
      ).toEqual([user.passkeyId]);
      const [event] = await events(from, 1);
      expect(event?.event).toEqual({
        case: "passkeysChanged",
        value: expect.objectContaining({ added: false, passkeyCount: 0, byOperator: true }),
      });
      expect(audits("admin.passkeys.removed").at(-1)).toMatchObject({ userId: `${user.userId}` });
      expect((await app.admin.listPasskeys({ userId: bystander.userId })).passkeys).toHaveLength(1);
    });

    it("deleting the account deletes its passkeys", async () => {
      const user = await withPasskey();
      await app.admin.deleteUser({ userId: user.userId });
      const { rows } = await database.db.query<{ n: bigint }>(
        "SELECT count(*) AS n FROM passkeys WHERE user_id = $1",
        [user.userId],
      );
      expect(Number(rows[0]?.n)).toBe(0);
      const { authId, options } = await atPasskeyStep();
      await expectRpcError(
        answer(authId, user.soft.assert(options, { origin: ORIGIN })),
        Code.Unauthenticated,
        "h.bad-passkey",
      );
    });
  });

  it("never logs a challenge, a key or an assertion", () => {
    const all = logs.join("\n");
    expect(all).not.toMatch(/"challenge"|publicKey|clientDataJSON|authenticatorData/);
  });
});
