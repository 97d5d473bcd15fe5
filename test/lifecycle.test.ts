import { Code } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { StreamAccountEventsResponse } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { backends, postgresBackend, type TestDatabase } from "./helpers/databases.js";
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
import { watchNotifications } from "./helpers/notifications.js";
import { startSmtpServer } from "./helpers/smtp.js";

const auth = (token: string) => ({ headers: { authorization: token } });
const titleOf = (res: Awaited<ReturnType<TestApp["client"]["nextStep"]>>) =>
  res.step?.step.case === "session" ? "session" : res.step?.step.value?.title;

describe.each(backends)("the account lifecycle on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;
  let smtp: Awaited<ReturnType<typeof startSmtpServer>>;

  beforeAll(async () => {
    smtp = await startSmtpServer();
    database = await backend.open();
    app = await createTestApp(database.db, {
      // Codes expire before their flow (FLOW_TTL, 15 min), so expiry is the code's own.
      env: { SMTP_URL: smtp.url, SERVER_ID: "chat.example.org:2289", EMAIL_CODE_TTL: "5m" },
    });
  });
  afterEach(() => app.clock.reset());
  afterAll(async () => {
    await app?.close();
    await database?.close();
    await smtp?.close();
  });

  /** Walks a new flow through other-options to `option`. */
  async function openOther(option: string): Promise<string> {
    const { authId } = await app.client.beginAuth({});
    await app.client.nextStep({ authId });
    await choose(app.client, authId, "other-options");
    await choose(app.client, authId, option);
    return authId;
  }
  /** Asks for a code for `email` by `option`; returns the flow's auth_id. */
  async function askCode(option: "reset-password" | "delete-user", email: string) {
    const authId = await openOther(option);
    const next = await submitForm(app.client, authId, [text(email)]);
    expect(titleOf(next)).toBe(`${option}-input-token`);
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

  it("offers what SMTP makes possible under other-options", async () => {
    const { authId } = await app.client.beginAuth({});
    await app.client.nextStep({ authId });
    const res = await choose(app.client, authId, "other-options");
    expect(res.step?.step).toEqual({
      case: "choice",
      value: expect.objectContaining({
        title: "other-options",
        options: ["reset-password", "delete-user", "change-password"],
      }),
    });
  });

  describe("reset-password", () => {
    let user: TestUser & { userId: bigint; sessionToken: string };
    beforeAll(async () => {
      const u = newUser();
      user = { ...u, ...(await register(app.client, u)) };
    });

    it("emails a known address a code, and an unknown one nothing, with the same steps", async () => {
      const unknown = newUser().email;
      await askCode("reset-password", unknown);
      await askCode("reset-password", user.email);
      const mail = await smtp.next(user.email);
      expect(mail.subject).toContain("chat.example.org:2289");
      expect(mail.text).toContain("chat.example.org:2289");
      expect(mail.code).toMatch(/^[0-9A-Z]{4}-[0-9A-Z]{4}$/);
      expect(smtp.received.filter((m) => m.to === unknown)).toEqual([]);
    });

    it("resets the password with the code, ending every session, once", async () => {
      const second = await login(app.client, user.email, user.password);
      const from = await head();
      const authId = await askCode("reset-password", user.email);
      const { code } = await smtp.next(user.email);
      await expectRpcError(
        submitForm(app.client, authId, [bytes("WRON-GCOD"), bytes("a brand new password")]),
        Code.Unauthenticated,
        "h.invalid-single-use-token",
      );
      // A new password that breaks a rule costs nothing: the code still works.
      await expectRpcError(
        submitForm(app.client, authId, [bytes(code ?? ""), bytes("short")]),
        Code.InvalidArgument,
        "h.invalid-password",
      );
      const done = await submitForm(app.client, authId, [
        bytes((code ?? "").toLowerCase().replace("-", " ")),
        bytes("a brand new password"),
      ]);
      expect(done.step?.step).toEqual({
        case: "choice",
        value: expect.objectContaining({ title: "success", options: ["back-to-initial"] }),
      });
      expect(done.step?.canGoBack).toBe(false);
      for (const token of [user.sessionToken, second.sessionToken]) {
        await expectRpcError(
          app.client.checkLoggedIn({}, auth(token)),
          Code.Unauthenticated,
          "h.blank-session",
        );
      }
      await expectRpcError(
        login(app.client, user.email, user.password),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      await login(app.client, user.email, "a brand new password");
      const revoked = await events(from, 1);
      expect(revoked[0]?.event.case).toBe("sessionsRevoked");
      const back = await choose(app.client, authId, "back-to-initial");
      expect(back.step?.step.value).toMatchObject({ title: "initial" });
    });

    it("refuses a used, an expired and a five-times-wrong code alike", async () => {
      const password = "a brand new password";
      // Used: the flow that spent it cannot spend it again.
      const used = await askCode("reset-password", user.email);
      const first = await smtp.next(user.email);
      await submitForm(app.client, used, [bytes(first.code ?? ""), bytes(`${password}!`)]);
      const again = await askCode("reset-password", user.email);
      await smtp.next(user.email);
      await expectRpcError(
        submitForm(app.client, again, [bytes(first.code ?? ""), bytes(password)]),
        Code.Unauthenticated,
        "h.invalid-single-use-token",
      );
      // Expired.
      const late = await askCode("reset-password", user.email);
      const lateMail = await smtp.next(user.email);
      app.clock.advance(5 * 60_000);
      try {
        await expectRpcError(
          submitForm(app.client, late, [bytes(lateMail.code ?? ""), bytes(password)]),
          Code.Unauthenticated,
          "h.invalid-single-use-token",
        );
      } finally {
        app.clock.advance(-5 * 60_000);
      }
      // Five wrong entries spend it.
      const guessed = await askCode("reset-password", user.email);
      const right = await smtp.next(user.email);
      for (let i = 0; i < 5; i++) {
        await expectRpcError(
          submitForm(app.client, guessed, [bytes(`AAAA-AAA${i}`), bytes(password)]),
          Code.Unauthenticated,
          "h.invalid-single-use-token",
        );
      }
      await expectRpcError(
        submitForm(app.client, guessed, [bytes(right.code ?? ""), bytes(password)]),
        Code.Unauthenticated,
        "h.invalid-single-use-token",
      );
    });
  });

  describe("email sending limits", () => {
    it("caps codes per email address, known or not, and per client address", async () => {
      const limited = await createTestApp(database.db, {
        env: {
          SMTP_URL: smtp.url,
          LIMIT_EMAILS_PER_ACCOUNT: "2/1h",
          LIMIT_EMAILS_PER_ADDRESS: "4/1h",
        },
        clock: app.clock,
      });
      try {
        const ask = async (email: string) => {
          const { authId } = await limited.client.beginAuth({});
          await limited.client.nextStep({ authId });
          await choose(limited.client, authId, "other-options");
          await choose(limited.client, authId, "reset-password");
          return submitForm(limited.client, authId, [text(email)]);
        };
        const user = newUser();
        await register(limited.client, user);
        // Two for one address, each emailed; the third is refused, and nothing is sent for it.
        for (let i = 0; i < 2; i++) {
          expect(titleOf(await ask(user.email))).toBe("reset-password-input-token");
          await smtp.next(user.email);
        }
        const sent = smtp.received.length;
        const third = await rpcError(ask(user.email));
        expect(third).toMatchObject({
          codeName: "ResourceExhausted",
          identifier: "hrpc.resource-exhausted",
        });
        // An unknown address has the same budget per address…
        expect(titleOf(await ask("nobody-limited@example.org"))).toBe("reset-password-input-token");
        // …and the client's fifth request in all (the refused one counted) is refused,
        // whatever the address.
        await expectRpcError(
          ask(newUser().email),
          Code.ResourceExhausted,
          "hrpc.resource-exhausted",
        );
        // The refused ones sent nothing (the unknown address never gets mail).
        await new Promise((r) => setTimeout(r, 200));
        expect(smtp.received.length).toBe(sent);
      } finally {
        await limited.close();
      }
    });
  });

  describe("delete-user", () => {
    it("deletes the account with a code; its email and username can be registered again", async () => {
      const user = newUser();
      const { userId, sessionToken } = await register(app.client, user);
      const from = await head();
      const authId = await askCode("delete-user", user.email);
      const { code } = await smtp.next(user.email);
      expect((await smtp.received.at(-1))?.subject).toContain("delete");
      const done = await submitForm(app.client, authId, [bytes(code ?? "")]);
      expect(done.step?.step.value).toMatchObject({ title: "success" });
      await expectRpcError(
        app.client.checkLoggedIn({}, auth(sessionToken)),
        Code.Unauthenticated,
        "h.blank-session",
      );
      expect((await app.homeserver.getUsers({ userIds: [userId] })).users).toEqual([]);
      expect((await events(from, 1)).map((e) => [e.userId, e.event.case])).toEqual([
        [userId, "deleted"],
      ]);
      const again = await register(app.client, user);
      expect(again.userId).not.toBe(userId);
    });

    it("says nothing of an unknown email: the same steps, and its code never works", async () => {
      const authId = await askCode("delete-user", newUser().email);
      await expectRpcError(
        submitForm(app.client, authId, [bytes("ABCD-EFGH")]),
        Code.Unauthenticated,
        "h.invalid-single-use-token",
      );
    });
  });

  describe("change-password", () => {
    it("changes the password with the old one, ends every other session and logs in", async () => {
      const user = newUser();
      const first = await register(app.client, user);
      const authId = await openOther("change-password");
      await expectRpcError(
        submitForm(app.client, authId, [
          text(user.email),
          bytes("not the password"),
          bytes("new password here"),
        ]),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      const done = await submitForm(app.client, authId, [
        text(user.email),
        bytes(user.password),
        bytes("new password here"),
      ]);
      if (done.step?.step.case !== "session") throw new Error("expected a session");
      await app.client.checkLoggedIn({}, auth(done.step.step.value.sessionToken));
      await expectRpcError(
        app.client.checkLoggedIn({}, auth(first.sessionToken)),
        Code.Unauthenticated,
        "h.blank-session",
      );
      await login(app.client, user.email, "new password here");
    });
  });

  describe("the account service", () => {
    it("lists the caller's sessions, marking its own, and revokes one, the others, or itself", async () => {
      const user = newUser();
      const a = await register(app.client, user);
      const b = await login(app.client, user.email, user.password);
      const c = await login(app.client, user.email, user.password);
      const { sessions } = await app.account.listSessions({}, auth(b.sessionToken));
      expect(sessions).toHaveLength(3);
      expect(sessions.filter((s) => s.current)).toHaveLength(1);
      const current = sessions.find((s) => s.current);
      const cId = (await app.homeserver.introspect({ sessionToken: c.sessionToken })).sessionId;
      expect(current?.sessionId).toBe(
        (await app.homeserver.introspect({ sessionToken: b.sessionToken })).sessionId,
      );
      await app.account.revokeSession({ id: cId }, auth(b.sessionToken));
      await expectRpcError(
        app.client.checkLoggedIn({}, auth(c.sessionToken)),
        Code.Unauthenticated,
        "h.blank-session",
      );
      await expectRpcError(
        app.account.revokeSession({ id: cId }, auth(b.sessionToken)),
        Code.InvalidArgument,
        "h.bad-session-id",
      );
      expect((await app.account.revokeOtherSessions({}, auth(b.sessionToken))).revoked).toBe(1);
      await expectRpcError(
        app.client.checkLoggedIn({}, auth(a.sessionToken)),
        Code.Unauthenticated,
        "h.blank-session",
      );
      await app.account.logout({}, auth(b.sessionToken));
      await expectRpcError(
        app.client.checkLoggedIn({}, auth(b.sessionToken)),
        Code.Unauthenticated,
        "h.blank-session",
      );
      await expectRpcError(app.account.listSessions({}), Code.Unauthenticated, "h.blank-session");
    });

    it("cannot revoke another user's session", async () => {
      const mine = await register(app.client, newUser());
      const theirs = await register(app.client, newUser());
      const theirId = (await app.homeserver.introspect({ sessionToken: theirs.sessionToken }))
        .sessionId;
      await expectRpcError(
        app.account.revokeSession({ id: theirId }, auth(mine.sessionToken)),
        Code.InvalidArgument,
        "h.bad-session-id",
      );
      await app.client.checkLoggedIn({}, auth(theirs.sessionToken));
    });
  });

  describe("email verification and invites", () => {
    it("with EMAIL_VERIFICATION=required, makes the account only once its code is entered", async () => {
      const verifying = await createTestApp(database.db, {
        env: { SMTP_URL: smtp.url, EMAIL_VERIFICATION: "required" },
        clock: app.clock,
      });
      try {
        const user = newUser();
        const authId = await openForm(verifying.client, "register");
        const next = await submitForm(verifying.client, authId, [
          text(user.email),
          text(user.username),
          bytes(user.password),
        ]);
        expect(next.step?.step.value).toMatchObject({
          title: "register-input-token",
          fields: [{ name: "token", type: "password" }],
        });
        await expectRpcError(
          login(verifying.client, user.email, user.password),
          Code.Unauthenticated,
          "h.bad-password\nh.bad-email",
        );
        const mail = await smtp.next(user.email);
        expect(mail.subject).toContain("registering");
        await expectRpcError(
          submitForm(verifying.client, authId, [bytes("ZZZZ-ZZZZ")]),
          Code.Unauthenticated,
          "h.invalid-single-use-token",
        );
        const done = await submitForm(verifying.client, authId, [bytes(mail.code ?? "")]);
        expect(done.step?.step.case).toBe("session");
        await login(verifying.client, user.email, user.password);
      } finally {
        await verifying.close();
      }
    });

    it("with EMAIL_VERIFICATION=required, does not tell the form that an email has an account", async () => {
      const verifying = await createTestApp(database.db, {
        env: { SMTP_URL: smtp.url, EMAIL_VERIFICATION: "required" },
        clock: app.clock,
      });
      try {
        const owner = newUser();
        await register(app.client, owner);
        const stranger = newUser();
        const authId = await openForm(verifying.client, "register");
        const next = await submitForm(verifying.client, authId, [
          text(owner.email),
          text(stranger.username),
          bytes(stranger.password),
        ]);
        // The same step as for a new address…
        expect(next.step?.step.value).toMatchObject({ title: "register-input-token" });
        // …and the owner hears of it, with no code in the email.
        const mail = await smtp.next(owner.email);
        expect(mail.subject).toContain("tried to register");
        expect(mail.code).toBeUndefined();
        await expectRpcError(
          submitForm(verifying.client, authId, [bytes("ZZZZ-ZZZZ")]),
          Code.Unauthenticated,
          "h.invalid-single-use-token",
        );
        // The owner's account is untouched; a taken username (public anyway) is still said.
        await login(verifying.client, owner.email, owner.password);
        const again = await openForm(verifying.client, "register");
        await expectRpcError(
          submitForm(verifying.client, again, [
            text(newUser().email),
            text(owner.username),
            bytes(stranger.password),
          ]),
          Code.AlreadyExists,
          "h.already-registered",
        );
      } finally {
        await verifying.close();
      }
    });

    it("with REGISTRATION=invite, takes an invite code, used up and expiring", async () => {
      const invited = await createTestApp(database.db, {
        env: { REGISTRATION: "invite" },
        clock: app.clock,
      });
      try {
        const { code } = await invited.admin.createInvite({ maxUses: 2, validForSeconds: 3600n });
        const attempt = async (invite: string) => {
          const user = newUser();
          const authId = await openForm(invited.client, "register");
          return submitForm(invited.client, authId, [
            text(user.email),
            text(user.username),
            bytes(user.password),
            text(invite),
          ]);
        };
        const authId = await openForm(invited.client, "register");
        const form = await invited.client.nextStep({ authId });
        expect(form.step?.step.value).toMatchObject({
          fields: [
            { name: "email", type: "email" },
            { name: "username", type: "text" },
            { name: "password", type: "new-password" },
            { name: "token", type: "text" },
          ],
        });
        await expectRpcError(
          attempt("not-an-invite"),
          Code.PermissionDenied,
          "h.invalid-registration-token",
        );
        expect(titleOf(await attempt(code))).toBe("session");
        expect(titleOf(await attempt(code))).toBe("session");
        await expectRpcError(attempt(code), Code.PermissionDenied, "h.invalid-registration-token");
        const short = await invited.admin.createInvite({ maxUses: 5, validForSeconds: 60n });
        invited.clock.advance(61_000);
        try {
          await expectRpcError(
            attempt(short.code),
            Code.PermissionDenied,
            "h.invalid-registration-token",
          );
        } finally {
          invited.clock.advance(-61_000);
        }
      } finally {
        await invited.close();
      }
    });
  });
});

describe.skipIf(postgresBackend === undefined)("a reset seen by another replica", () => {
  it("ends the account's sessions on the replica that cached them", async () => {
    const smtp = await startSmtpServer();
    const database = await (postgresBackend as NonNullable<typeof postgresBackend>).open();
    const onB = watchNotifications(database.db);
    const a = await createTestApp(database.db, { env: { SMTP_URL: smtp.url } });
    const b = await createTestApp(onB.db, { env: { SMTP_URL: smtp.url } });
    try {
      const user = newUser();
      const { sessionToken } = await register(a.client, user);
      await b.client.checkLoggedIn({}, auth(sessionToken)); // cached on B
      const { authId } = await a.client.beginAuth({});
      await a.client.nextStep({ authId });
      await choose(a.client, authId, "other-options");
      await choose(a.client, authId, "reset-password");
      await submitForm(a.client, authId, [text(user.email)]);
      const { code } = await smtp.next(user.email);
      const heard = onB.sessionDeleted(sessionToken);
      await submitForm(a.client, authId, [bytes(code ?? ""), bytes("reset on replica A")]);
      await heard; // B heard the deletion through NOTIFY
      expect(await rpcError(b.client.checkLoggedIn({}, auth(sessionToken)))).toMatchObject({
        identifier: "h.blank-session",
      });
    } finally {
      await a.close();
      await b.close();
      await database.close();
      await smtp.close();
    }
  });
});
