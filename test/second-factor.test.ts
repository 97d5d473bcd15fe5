import { randomBytes } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { Secret, TOTP } from "otpauth";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { StreamAccountEventsResponse } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import type { AuthStep } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError, rpcError } from "./helpers/errors.js";
import {
  bytes,
  choose,
  login,
  newUser,
  openForm,
  register,
  submitForm,
  type TestUser,
  text,
} from "./helpers/flow.js";
import { decodeQrSvg } from "./helpers/qr.js";
import { startSmtpServer } from "./helpers/smtp.js";

/**
 * TOTP and recovery codes, end to end through the account service, the login
 * flow and the admin API. TOTP time is the fake clock's: a code is made for
 * `clock.now()` (or a step either side of it), and the clock is moved on a
 * step (30 s) where a test needs a fresh code, never slept for.
 */

const STEP_MS = 30_000;
const auth = (token: string) => ({ headers: { authorization: token } });
const titleOf = (res: { step?: AuthStep | undefined }) =>
  res.step?.step.case === "session" ? "session" : res.step?.step.value?.title;

describe.each(backends)("TOTP and recovery codes on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;
  let smtp: Awaited<ReturnType<typeof startSmtpServer>>;
  /** Every log line, at trace: none may carry a secret or a code. */
  const logs: string[] = [];

  beforeAll(async () => {
    smtp = await startSmtpServer();
    database = await backend.open();
    app = await createTestApp(database.db, {
      env: {
        SMTP_URL: smtp.url,
        SERVER_ID: "chat.example.org:2289",
        // The login schedule on, as in production but with a short fuse.
        LOGIN_FAILURES_BEFORE_DELAY: "3",
        LOGIN_FIRST_DELAY: "1s",
      },
      logger: pino({ level: "trace" }, { write: (line: string) => logs.push(line) }),
    });
  });
  afterEach(() => app.clock.reset());
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await smtp?.close();
  });

  /** The code an authenticator app shows for `secret` at `at`. */
  const totp = (secret: string, at = app.clock.now()) =>
    TOTP.generate({ secret: Secret.fromBase32(secret), timestamp: at });
  /** A 6-digit code that is none of the three the server accepts now. */
  const wrongCode = (secret: string) => {
    const valid = [-1, 0, 1].map((k) => totp(secret, app.clock.now() + k * STEP_MS));
    for (let n = 0; ; n++) {
      const code = String(n).padStart(6, "0");
      if (!valid.includes(code)) return code;
    }
  };
  /** Moves the clock to the next time step, so the app shows a new code. */
  const nextStep = () => app.clock.advance(STEP_MS);

  interface Enrolled extends TestUser {
    userId: bigint;
    sessionToken: string;
    secret: string;
    recoveryCodes: string[];
  }

  /** A new account with TOTP on (and the clock one step on, past the confirming code). */
  async function enrolled(): Promise<Enrolled> {
    const user = newUser();
    const session = await register(app.client, user);
    const { secret } = await app.account.beginTotpEnrollment({}, auth(session.sessionToken));
    const { recoveryCodes } = await app.account.confirmTotpEnrollment(
      { code: totp(secret) },
      auth(session.sessionToken),
    );
    nextStep();
    return { ...user, ...session, secret, recoveryCodes };
  }

  /** A login flow past a correct password: it stands on the `totp` form. */
  async function atCodeStep(user: TestUser): Promise<string> {
    const authId = await openForm(app.client, "login");
    const res = await submitForm(app.client, authId, [text(user.email), bytes(user.password)]);
    expect(titleOf(res)).toBe("totp");
    return authId;
  }

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
  const audits = (event: string) =>
    logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.audit === event);

  it("enrols: a fresh secret with its otpauth URI and QR code, on only once confirmed with a code", async () => {
    const user = newUser();
    const { userId, sessionToken } = await register(app.client, user);
    const from = await head();

    const begun = await app.account.beginTotpEnrollment({}, auth(sessionToken));
    expect(begun.secret).toMatch(/^[A-Z2-7]{32}$/); // 160 bits in base32
    const uri = new URL(begun.otpauthUri);
    expect(uri.protocol).toBe("otpauth:");
    expect(uri.host).toBe("totp");
    expect(decodeURIComponent(uri.pathname)).toBe(`/chat.example.org:${user.email}`);
    expect(Object.fromEntries(uri.searchParams)).toEqual({
      issuer: "chat.example.org",
      secret: begun.secret,
      algorithm: "SHA1",
      digits: "6",
      period: "30",
    });
    expect(begun.qrCodeSvg).toMatch(/^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    expect(decodeQrSvg(begun.qrCodeSvg)).toBe(begun.otpauthUri);

    // Begun but not confirmed: nothing changes for logins.
    expect(await app.account.getSecondFactor({}, auth(sessionToken))).toMatchObject({
      totpEnabled: false,
      totpEnrollmentPending: true,
      recoveryCodesLeft: 0,
    });
    await login(app.client, user.email, user.password);

    // Beginning again replaces the unconfirmed secret: codes of the first no longer confirm.
    const again = await app.account.beginTotpEnrollment({}, auth(sessionToken));
    expect(again.secret).not.toBe(begun.secret);
    await expectRpcError(
      app.account.confirmTotpEnrollment({ code: totp(begun.secret) }, auth(sessionToken)),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    const { recoveryCodes } = await app.account.confirmTotpEnrollment(
      { code: totp(again.secret) },
      auth(sessionToken),
    );
    expect(recoveryCodes).toHaveLength(10);
    expect(new Set(recoveryCodes).size).toBe(10);
    for (const code of recoveryCodes)
      expect(code).toMatch(/^([0-9A-HJKMNP-TV-Z]{4}-){3}[0-9A-HJKMNP-TV-Z]{4}$/);

    const status = await app.account.getSecondFactor({}, auth(sessionToken));
    expect(status).toMatchObject({
      totpEnabled: true,
      totpEnrollmentPending: false,
      recoveryCodesLeft: 10,
    });
    expect(status.totpEnabledAt?.seconds).toBe(BigInt(Math.floor(app.clock.now() / 1000)));
    const [changed] = await events(from, 1);
    expect(changed).toMatchObject({
      userId,
      event: { case: "secondFactorChanged", value: { enabled: true, byOperator: false } },
    });
    expect(audits("totp.enabled").map((l) => l.userId)).toContain(userId.toString());

    // On: a second enrolment waits until this one is turned off.
    await expectRpcError(
      app.account.beginTotpEnrollment({}, auth(sessionToken)),
      Code.FailedPrecondition,
      "h.totp-already-enabled",
    );
    await expectRpcError(
      app.account.confirmTotpEnrollment({ code: totp(again.secret) }, auth(sessionToken)),
      Code.FailedPrecondition,
      "h.totp-already-enabled",
    );

    // At rest: the secret sealed (not its bytes), the recovery codes only as HMACs.
    const raw = Buffer.from(Secret.fromBase32(again.secret).bytes);
    const { rows } = await database.db.query<{ secret: Uint8Array }>(
      "SELECT secret FROM totp_factors WHERE user_id = $1",
      [userId],
    );
    const sealed = Buffer.from(rows[0]?.secret ?? []);
    expect(sealed).toHaveLength(12 + 20 + 16);
    expect(sealed.includes(raw)).toBe(false);
    const stored = await database.db.query<{ code_hmac: Uint8Array }>(
      "SELECT code_hmac FROM recovery_codes WHERE user_id = $1",
      [userId],
    );
    expect(stored.rows).toHaveLength(10);
    const dump = Buffer.concat(stored.rows.map((r) => Buffer.from(r.code_hmac))).toString("latin1");
    for (const code of recoveryCodes) expect(dump).not.toContain(code.replaceAll("-", ""));
  });

  it("refuses to confirm without an enrolment, and needs a session for every call", async () => {
    const { sessionToken } = await register(app.client, newUser());
    await expectRpcError(
      app.account.confirmTotpEnrollment({ code: "123456" }, auth(sessionToken)),
      Code.FailedPrecondition,
      "h.totp-not-enrolling",
    );
    await expectRpcError(
      app.account.regenerateRecoveryCodes({ code: "123456" }, auth(sessionToken)),
      Code.FailedPrecondition,
      "h.totp-not-enabled",
    );
    await expectRpcError(
      app.account.beginTotpEnrollment({}),
      Code.Unauthenticated,
      "h.blank-session",
    );
  });

  it("asks a session older than REAUTH_WINDOW (10 minutes) for the password before it enrols", async () => {
    const user = newUser();
    const { userId, sessionToken } = await register(app.client, user);
    app.clock.advance(10 * 60_000 + 1000);
    await expectRpcError(
      app.account.beginTotpEnrollment({}, auth(sessionToken)),
      Code.PermissionDenied,
      "h.password-needed",
    );
    await expectRpcError(
      app.account.beginTotpEnrollment({ password: "not the password" }, auth(sessionToken)),
      Code.Unauthenticated,
      "h.bad-password\nh.bad-email",
    );
    expect(audits("totp.refused").filter((l) => l.userId === userId.toString())).toMatchObject([
      { reason: "password-needed" },
      { reason: "bad-password" },
    ]);
    // Nothing was begun by the refused calls.
    expect((await app.account.getSecondFactor({}, auth(sessionToken))).totpEnrollmentPending).toBe(
      false,
    );
    const begun = await app.account.beginTotpEnrollment(
      { password: user.password },
      auth(sessionToken),
    );
    expect(begun.secret).toMatch(/^[A-Z2-7]{32}$/);
    // A session that has just signed in needs nothing more.
    const fresh = await login(app.client, user.email, user.password);
    expect((await app.account.beginTotpEnrollment({}, auth(fresh.sessionToken))).secret).not.toBe(
      begun.secret,
    );
  });

  it("leaves users of other homeservers to their homeserver: they cannot enrol here", async () => {
    const id = 987_654_321n;
    await database.db.query(
      `INSERT INTO users (id, username, homeserver, foreign_user_id, created_at)
       VALUES ($1, 'visitor', 'other.example.org:2289', 7, now())`,
      [id],
    );
    const token = await app.ctx.sessions.create(database.db, id, {
      address: "127.0.0.1",
      userAgent: undefined,
    });
    await expectRpcError(
      app.account.beginTotpEnrollment({}, auth(token)),
      Code.FailedPrecondition,
      "h.not-local-user",
    );
  });

  it("logs in with a code after the password: form totp [code:text], not spent, can go back", async () => {
    const user = await enrolled();
    const authId = await openForm(app.client, "login");
    const res = await submitForm(app.client, authId, [text(user.email), bytes(user.password)]);
    expect(res.step).toMatchObject({
      canGoBack: true,
      step: {
        case: "form",
        value: { title: "totp", fields: [{ name: "code", type: "text" }] },
      },
    });
    // The flow is not spent: asking again shows the same step.
    expect(titleOf(await app.client.nextStep({ authId }))).toBe("totp");
    // Back to the password form, and forward again.
    expect(titleOf(await app.client.stepBack({ authId }))).toBe("login");
    await expectRpcError(
      submitForm(app.client, authId, [text(user.email), bytes("not the password")]),
      Code.Unauthenticated,
      "h.bad-password\nh.bad-email",
    );
    expect(
      titleOf(await submitForm(app.client, authId, [text(user.email), bytes(user.password)])),
    ).toBe("totp");
    // Three attempts without a finished login (the right password counts until its code is in):
    // the schedule's first wait, then the code.
    app.clock.advance(1_000);
    // The form takes the code as Harmony clients type it: spaces are fine.
    const code = totp(user.secret);
    const done = await submitForm(app.client, authId, [
      text(`${code.slice(0, 3)} ${code.slice(3)}`),
    ]);
    expect(done.step?.step.case).toBe("session");
    const session = done.step?.step.value as { sessionToken: string; userId: bigint };
    expect(session.userId).toBe(user.userId);
    await app.client.checkLoggedIn({}, auth(session.sessionToken));
    await expectRpcError(app.client.nextStep({ authId }), Code.FailedPrecondition, "h.bad-auth-id");
  });

  it("refuses a wrong code as a wrong password is refused, leaving the flow on its step", async () => {
    const user = await enrolled();
    const authId = await atCodeStep(user);
    for (const wrong of [wrongCode(user.secret), "12345", "not a code", ""]) {
      const message = await expectRpcError(
        submitForm(app.client, authId, [text(wrong)]),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
      expect(message).toContain("authenticator app");
      app.clock.advance(60_000); // past the schedule's waits: this test is about the answer
    }
    expect(titleOf(await app.client.nextStep({ authId }))).toBe("totp");
    const failed = audits("login.failed").filter((l) => l.userId === user.userId.toString());
    expect(failed.map((l) => l.reason)).toEqual(Array(4).fill("bad-second-factor"));
    // A code sent as bytes is not the form's text field.
    await expectRpcError(
      submitForm(app.client, authId, [bytes(totp(user.secret))]),
      Code.InvalidArgument,
      "h.missing-form",
    );
  });

  it("accepts one code once: a replay is refused on any flow, and so is an older code", async () => {
    const user = await enrolled();
    const code = totp(user.secret);
    const first = await atCodeStep(user);
    expect((await submitForm(app.client, first, [text(code)])).step?.step.case).toBe("session");

    const second = await atCodeStep(user);
    const message = await expectRpcError(
      submitForm(app.client, second, [text(code)]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    expect(message).toContain("already used");
    // The code of the step before is still within the skew, but older than one used.
    await expectRpcError(
      submitForm(app.client, second, [text(totp(user.secret, app.clock.now() - STEP_MS))]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    nextStep();
    expect((await submitForm(app.client, second, [text(totp(user.secret))])).step?.step.case).toBe(
      "session",
    );
    expect(audits("login.failed").some((l) => l.reason === "second-factor-replayed")).toBe(true);
  });

  it("lets one code log in once when two replicas race with it", async () => {
    // A second process on the same database. Its login schedule is off, so the
    // race is decided by the code alone, not by the attempts it adds.
    const replica = await createTestApp(database.db, { clock: app.clock });
    try {
      const user = await enrolled();
      const onA = await atCodeStep(user);
      const onB = await openForm(replica.client, "login");
      await submitForm(replica.client, onB, [text(user.email), bytes(user.password)]);
      const code = totp(user.secret);
      const results = await Promise.allSettled([
        submitForm(app.client, onA, [text(code)]),
        submitForm(replica.client, onB, [text(code)]),
      ]);
      const sessions = results.filter(
        (r) => r.status === "fulfilled" && r.value.step?.step.case === "session",
      );
      expect(sessions).toHaveLength(1);
      const refused = results.find((r) => r.status === "rejected");
      expect(await rpcError(Promise.reject(refused?.reason))).toMatchObject({
        codeName: "Unauthenticated",
        identifier: "h.bad-second-factor",
      });
    } finally {
      await replica.close();
    }
  });

  it("accepts a code one step (30 s) early or late for clock skew, not two", async () => {
    const user = await enrolled();
    nextStep(); // the step before is then not the confirming code's
    const authId = await atCodeStep(user);
    const now = app.clock.now();
    for (const off of [-2, 2]) {
      await expectRpcError(
        submitForm(app.client, authId, [text(totp(user.secret, now + off * STEP_MS))]),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
    }
    app.clock.advance(2_000); // the schedule's wait after three failures
    // One step behind (the phone's clock is slow)...
    const behind = await submitForm(app.client, authId, [
      text(totp(user.secret, app.clock.now() - STEP_MS)),
    ]);
    expect(behind.step?.step.case).toBe("session");
    // ...and one step ahead (it is fast).
    const ahead = await atCodeStep(user);
    const res = await submitForm(app.client, ahead, [
      text(totp(user.secret, app.clock.now() + STEP_MS)),
    ]);
    expect(res.step?.step.case).toBe("session");
  });

  it("takes a recovery code in the totp form, or in the recovery-code form, each once", async () => {
    const user = await enrolled();
    const [first, second] = user.recoveryCodes;

    const a = await atCodeStep(user);
    expect((await submitForm(app.client, a, [text(first ?? "")])).step?.step.case).toBe("session");
    expect((await app.account.getSecondFactor({}, auth(user.sessionToken))).recoveryCodesLeft).toBe(
      9,
    );

    // The choice "recovery-code" on the totp step: a form for a recovery code.
    const b = await atCodeStep(user);
    const form = await choose(app.client, b, "recovery-code");
    expect(form.step).toMatchObject({
      canGoBack: true,
      step: {
        case: "form",
        value: { title: "recovery-code", fields: [{ name: "code", type: "text" }] },
      },
    });
    expect(titleOf(await app.client.stepBack({ authId: b }))).toBe("totp");
    await choose(app.client, b, "recovery-code");
    // A spent code is a wrong code.
    await expectRpcError(
      submitForm(app.client, b, [text(first ?? "")]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    // Typed loosely: lower case, without dashes.
    const typed = (second ?? "").replaceAll("-", "").toLowerCase();
    expect((await submitForm(app.client, b, [text(typed)])).step?.step.case).toBe("session");
    expect((await app.account.getSecondFactor({}, auth(user.sessionToken))).recoveryCodesLeft).toBe(
      8,
    );
    expect(
      audits("recovery_code.used").filter((l) => l.userId === user.userId.toString()),
    ).toHaveLength(2);

    // Other choices are still refused on the code step.
    const c = await atCodeStep(user);
    await expectRpcError(choose(app.client, c, "login"), Code.InvalidArgument, "h.bad-auth-choice");
  });

  it("counts wrong codes on the account's login schedule: delayed like wrong passwords", async () => {
    const user = await enrolled();
    // 1: the password (right, but the count stands until the code is right too), 2 and 3: wrong codes.
    const authId = await atCodeStep(user);
    for (let i = 0; i < 2; i++) {
      await expectRpcError(
        submitForm(app.client, authId, [text(wrongCode(user.secret))]),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
    }
    // Now delayed: even the right code is not looked at, and the password form is held too.
    const right = totp(user.secret);
    const held = await rpcError(submitForm(app.client, authId, [text(right)]));
    expect(held).toMatchObject({
      codeName: "ResourceExhausted",
      identifier: "hrpc.resource-exhausted",
    });
    const other = await openForm(app.client, "login");
    await expectRpcError(
      submitForm(app.client, other, [text(user.email), bytes(user.password)]),
      Code.ResourceExhausted,
      "hrpc.resource-exhausted",
    );
    expect(titleOf(await app.client.nextStep({ authId }))).toBe("totp");
    // Once the wait is over the right code logs in, and the count starts afresh.
    app.clock.advance(1_000);
    expect((await submitForm(app.client, authId, [text(right)])).step?.step.case).toBe("session");
    nextStep();
    const again = await atCodeStep(user);
    await expectRpcError(
      submitForm(app.client, again, [text(wrongCode(user.secret))]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    expect((await submitForm(app.client, again, [text(totp(user.secret))])).step?.step.case).toBe(
      "session",
    );
  });

  it("a right password buys no free guesses at codes through the account service", async () => {
    const user = await enrolled();
    const headers = auth(user.sessionToken);
    // BeginPasskeyRegistration with the right password and wrong codes: each call one attempt.
    for (let i = 0; i < 3; i++) {
      await expectRpcError(
        app.account.beginPasskeyRegistration(
          { password: user.password, code: wrongCode(user.secret) },
          headers,
        ),
        Code.Unauthenticated,
        "h.bad-second-factor",
      );
    }
    await expectRpcError(
      app.account.beginPasskeyRegistration(
        { password: user.password, code: wrongCode(user.secret) },
        headers,
      ),
      Code.ResourceExhausted,
      "hrpc.resource-exhausted",
    );
    app.clock.advance(60_000);
    // BeginTotpEnrollment with the password, between wrong codes, does not reset the count either:
    // TOTP is on, so it is refused before the password is looked at.
    await expectRpcError(
      app.account.beginTotpEnrollment({ password: user.password }, headers),
      Code.FailedPrecondition,
      "h.totp-already-enabled",
    );
    await expectRpcError(
      app.account.regenerateRecoveryCodes({ code: wrongCode(user.secret) }, headers),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    await expectRpcError(
      app.account.regenerateRecoveryCodes({ code: wrongCode(user.secret) }, headers),
      Code.ResourceExhausted,
      "hrpc.resource-exhausted",
    );
    // A wrong password with a right code spends nothing; once the wait is over, both right work.
    app.clock.advance(120_000);
    const code = totp(user.secret);
    await expectRpcError(
      app.account.beginPasskeyRegistration({ password: "not the password", code }, headers),
      Code.Unauthenticated,
      "h.bad-password\nh.bad-email",
    );
    app.clock.advance(10_000); // past the wait, and the code still within a step of now
    const { optionsJson } = await app.account.beginPasskeyRegistration(
      { password: user.password, code },
      headers,
    );
    expect(JSON.parse(optionsJson).challenge).toBeDefined();
  });

  it("turns off with the password and a current code or a recovery code", async () => {
    const user = await enrolled();
    const from = await head();
    await expectRpcError(
      app.account.disableTotp(
        { code: totp(user.secret), password: "not the password" },
        auth(user.sessionToken),
      ),
      Code.Unauthenticated,
      "h.bad-password\nh.bad-email",
    );
    await expectRpcError(
      app.account.disableTotp(
        { code: wrongCode(user.secret), password: user.password },
        auth(user.sessionToken),
      ),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    // Two failures so far: the third attempt is allowed, and its success resets the count.
    await app.account.disableTotp(
      { code: totp(user.secret), password: user.password },
      auth(user.sessionToken),
    );
    expect(await app.account.getSecondFactor({}, auth(user.sessionToken))).toMatchObject({
      totpEnabled: false,
      totpEnrollmentPending: false,
      recoveryCodesLeft: 0,
    });
    const [changed] = await events(from, 1);
    expect(changed?.event).toEqual({
      case: "secondFactorChanged",
      value: expect.objectContaining({ enabled: false, byOperator: false }),
    });
    const { rows } = await database.db.query(
      "SELECT 1 FROM recovery_codes WHERE user_id = $1 UNION ALL SELECT 1 FROM totp_factors WHERE user_id = $1",
      [user.userId],
    );
    expect(rows).toEqual([]);
    // The password alone logs in again.
    await login(app.client, user.email, user.password);
    await expectRpcError(
      app.account.disableTotp(
        { code: totp(user.secret), password: user.password },
        auth(user.sessionToken),
      ),
      Code.FailedPrecondition,
      "h.totp-not-enabled",
    );

    const other = await enrolled();
    await app.account.disableTotp(
      { code: other.recoveryCodes[3] ?? "", password: other.password },
      auth(other.sessionToken),
    );
    await login(app.client, other.email, other.password);
  });

  it("regenerates the recovery codes with a current code: every old one stops working", async () => {
    const user = await enrolled();
    await expectRpcError(
      app.account.regenerateRecoveryCodes(
        { code: wrongCode(user.secret) },
        auth(user.sessionToken),
      ),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    const { recoveryCodes } = await app.account.regenerateRecoveryCodes(
      { code: totp(user.secret) },
      auth(user.sessionToken),
    );
    expect(recoveryCodes).toHaveLength(10);
    expect(recoveryCodes.filter((c) => user.recoveryCodes.includes(c))).toEqual([]);
    const authId = await atCodeStep(user);
    await expectRpcError(
      submitForm(app.client, authId, [text(user.recoveryCodes[0] ?? "")]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    expect(
      (await submitForm(app.client, authId, [text(recoveryCodes[0] ?? "")])).step?.step.case,
    ).toBe("session");
  });

  it("a password reset leaves the second factor on", async () => {
    const user = await enrolled();
    const { authId } = await app.client.beginAuth({});
    await app.client.nextStep({ authId });
    await choose(app.client, authId, "other-options");
    await choose(app.client, authId, "reset-password");
    await submitForm(app.client, authId, [text(user.email)]);
    const { code } = await smtp.next(user.email);
    const done = await submitForm(app.client, authId, [
      bytes(code ?? ""),
      bytes("a password after the reset"),
    ]);
    expect(titleOf(done)).toBe("success");
    // The new password leads to the code step, as the old one did, and the code completes it.
    const session = await logInWithCode(user, "a password after the reset");
    expect((await app.account.getSecondFactor({}, auth(session.sessionToken))).totpEnabled).toBe(
      true,
    );
  });

  it("a reset voids logins and password changes waiting for their code with the old password", async () => {
    const user = await enrolled();
    // Whoever knew the old password: a login and a change of password, both at the code step.
    const pendingLogin = await atCodeStep(user);
    const { authId: pendingChange } = await app.client.beginAuth({});
    await app.client.nextStep({ authId: pendingChange });
    await choose(app.client, pendingChange, "other-options");
    await choose(app.client, pendingChange, "change-password");
    expect(
      titleOf(
        await submitForm(app.client, pendingChange, [
          text(user.email),
          bytes(user.password),
          bytes("the attacker's password"),
        ]),
      ),
    ).toBe("totp");
    // The owner resets the password by email.
    const { authId } = await app.client.beginAuth({});
    await app.client.nextStep({ authId });
    await choose(app.client, authId, "other-options");
    await choose(app.client, authId, "reset-password");
    await submitForm(app.client, authId, [text(user.email)]);
    const { code } = await smtp.next(user.email);
    await submitForm(app.client, authId, [bytes(code ?? ""), bytes("the owner's new password")]);
    // A right code no longer completes either. (Each try counts on the login
    // schedule, whose short fuse here is three: wait out each delay.)
    for (const pending of [pendingLogin, pendingChange]) {
      await expectRpcError(
        submitForm(app.client, pending, [text(totp(user.secret))]),
        Code.FailedPrecondition,
        "h.password-changed",
      );
      app.clock.advance(60_000);
    }
    // The owner's new password and a code still log in.
    const owner = await atCodeStep({ ...user, password: "the owner's new password" });
    app.clock.advance(60_000);
    const done = await submitForm(app.client, owner, [text(totp(user.secret))]);
    expect(done.step?.step.case).toBe("session");
  });

  /** Logs in with the password and the current code (then moves the clock on a step). */
  async function logInWithCode(user: Enrolled, password = user.password) {
    const authId = await atCodeStep({ ...user, password });
    const res = await submitForm(app.client, authId, [text(totp(user.secret))]);
    nextStep();
    if (res.step?.step.case !== "session") throw new Error("expected a session step");
    return res.step.step.value;
  }

  it("deleting by emailed code asks for the second factor too: the mailbox alone is not enough", async () => {
    const user = await enrolled();
    const { authId } = await app.client.beginAuth({});
    await app.client.nextStep({ authId });
    await choose(app.client, authId, "other-options");
    await choose(app.client, authId, "delete-user");
    await submitForm(app.client, authId, [text(user.email)]);
    const { code } = await smtp.next(user.email);
    const asked = await submitForm(app.client, authId, [bytes(code ?? "")]);
    expect(titleOf(asked)).toBe("totp");
    // Not deleted yet: the account still logs in, its session still works.
    await app.client.checkLoggedIn({}, auth(user.sessionToken));
    // A wrong code is refused and deletes nothing.
    await expectRpcError(
      submitForm(app.client, authId, [text(wrongCode(user.secret))]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    await app.client.checkLoggedIn({}, auth(user.sessionToken));
    // Going back finds the emailed code spent: it cannot skip the second factor another way.
    await app.client.stepBack({ authId });
    await expectRpcError(
      submitForm(app.client, authId, [bytes(code ?? "")]),
      Code.Unauthenticated,
      "h.invalid-single-use-token",
    );
    const again = await app.client.beginAuth({});
    await app.client.nextStep({ authId: again.authId });
    await choose(app.client, again.authId, "other-options");
    await choose(app.client, again.authId, "delete-user");
    await submitForm(app.client, again.authId, [text(user.email)]);
    const second = await smtp.next(user.email);
    expect(titleOf(await submitForm(app.client, again.authId, [bytes(second.code ?? "")]))).toBe(
      "totp",
    );
    app.clock.advance(60_000);
    const done = await submitForm(app.client, again.authId, [text(totp(user.secret))]);
    expect(titleOf(done)).toBe("success");
    await expectRpcError(
      app.client.checkLoggedIn({}, auth(user.sessionToken)),
      Code.Unauthenticated,
      "h.blank-session",
    );
    expect(audits("account.deleted").map((l) => l.userId)).toContain(user.userId.toString());
  });

  it("change-password asks for the code before it changes the password", async () => {
    const user = await enrolled();
    const { authId } = await app.client.beginAuth({});
    await app.client.nextStep({ authId });
    await choose(app.client, authId, "other-options");
    await choose(app.client, authId, "change-password");
    const res = await submitForm(app.client, authId, [
      text(user.email),
      bytes(user.password),
      bytes("the changed password"),
    ]);
    expect(titleOf(res)).toBe("totp");
    // Nothing changed yet: the old password still leads to the code step, the session still works.
    await atCodeStep(user);
    await app.client.checkLoggedIn({}, auth(user.sessionToken));
    const done = await submitForm(app.client, authId, [text(totp(user.secret))]);
    expect(done.step?.step.case).toBe("session");
    nextStep();
    await expectRpcError(
      app.client.checkLoggedIn({}, auth(user.sessionToken)),
      Code.Unauthenticated,
      "h.blank-session",
    );
    await logInWithCode(user, "the changed password");
  });

  it("an operator turns it off through the admin API, with an audit line and an event", async () => {
    const user = await enrolled();
    expect(
      (await app.admin.getUser({ user: { case: "userId", value: user.userId } })).user,
    ).toMatchObject({ totpEnabled: true });
    const from = await head();
    const { user: after } = await app.admin.disableTotp({ userId: user.userId });
    expect(after).toMatchObject({ userId: user.userId, totpEnabled: false });
    const [changed] = await events(from, 1);
    expect(changed).toMatchObject({
      userId: user.userId,
      event: { case: "secondFactorChanged", value: { enabled: false, byOperator: true } },
    });
    expect(audits("admin.totp.disabled").map((l) => l.userId)).toContain(user.userId.toString());
    // The password alone logs in; the recovery codes are gone with the factor.
    await login(app.client, user.email, user.password);
    expect(await app.account.getSecondFactor({}, auth(user.sessionToken))).toMatchObject({
      totpEnabled: false,
      recoveryCodesLeft: 0,
    });
    // Again: nothing to turn off, no second event.
    await app.admin.disableTotp({ userId: user.userId });
    expect(
      audits("admin.totp.disabled").filter((l) => l.userId === user.userId.toString()),
    ).toHaveLength(1);
    await expectRpcError(
      app.admin.disableTotp({ userId: 12345n }),
      Code.NotFound,
      "h.unknown-user",
    );
    // They can enrol again.
    await app.account.beginTotpEnrollment({}, auth(user.sessionToken));
  });

  it("a flow waiting for a code fails once the factor is turned off meanwhile; the password then suffices", async () => {
    const user = await enrolled();
    const authId = await atCodeStep(user);
    await app.admin.disableTotp({ userId: user.userId });
    await expectRpcError(
      submitForm(app.client, authId, [text(totp(user.secret))]),
      Code.Unauthenticated,
      "h.bad-second-factor",
    );
    expect(titleOf(await app.client.stepBack({ authId }))).toBe("login");
    const res = await submitForm(app.client, authId, [text(user.email), bytes(user.password)]);
    expect(res.step?.step.case).toBe("session");
  });

  it("logs no secret, code or recovery code, even at trace", async () => {
    const user = await enrolled();
    const session = await logInWithCode(user);
    const recovery = await atCodeStep(user);
    await submitForm(app.client, recovery, [text(user.recoveryCodes[9] ?? "")]);
    const all = logs.join("\n");
    expect(all).not.toContain(user.secret);
    expect(all).not.toContain(session.sessionToken);
    for (const code of user.recoveryCodes) {
      expect(all).not.toContain(code);
      expect(all).not.toContain(code.replaceAll("-", ""));
    }
    expect(all).not.toContain(user.password);
  });

  // Last: it encrypts this database's secrets, which a process without the key can then not open.
  it("KEY_ENCRYPTION_KEY encrypts the key TOTP secrets are sealed under; enrolled secrets still work", async () => {
    const user = await enrolled();
    const replica = await createTestApp(database.db, {
      clock: app.clock,
      env: { KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64") },
    });
    try {
      const { rows } = await database.db.query<{ encrypted: boolean }>(
        "SELECT encrypted FROM server_secrets WHERE name = 'second-factor'",
      );
      expect(rows).toEqual([{ encrypted: true }]);
      const authId = await openForm(replica.client, "login");
      await submitForm(replica.client, authId, [text(user.email), bytes(user.password)]);
      const done = await submitForm(replica.client, authId, [text(totp(user.secret))]);
      expect(done.step?.step.case).toBe("session");
    } finally {
      await replica.close();
    }
  });
});
