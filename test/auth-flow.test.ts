import { Code } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SPENT_FLOW_GRACE_MS } from "../src/auth/flows.js";
import type { AuthStep } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { countingHasher, createTestApp, type TestApp } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import {
  bytes,
  choose,
  login,
  newUser,
  openForm,
  register,
  submitForm,
  text,
} from "./helpers/flow.js";
import { watchNotifications } from "./helpers/notifications.js";

describe.each(backends)("auth flow on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;
  let notices: ReturnType<typeof watchNotifications>;

  beforeAll(async () => {
    database = await backend.open();
    notices = watchNotifications(database.db);
    app = await createTestApp(notices.db);
  });
  afterEach(() => app.clock.reset());
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  const count = async (table: string) =>
    Number(
      (await database.db.query<{ n: bigint }>(`SELECT count(*) AS n FROM ${table}`)).rows[0]?.n,
    );

  describe("steps", () => {
    it("begins with an auth_id of at least 128 bits in HTTP token characters", async () => {
      const ids = await Promise.all([1, 2, 3].map(() => app.client.beginAuth({})));
      for (const { authId } of ids) expect(authId).toMatch(/^[A-Za-z0-9_-]{32}$/);
      expect(new Set(ids.map((r) => r.authId)).size).toBe(3);
    });

    it("walks initial → login → back → register → back → other-options", async () => {
      const { client } = app;
      const { authId } = await client.beginAuth({});
      const first = (await client.nextStep({ authId })).step;
      expect(first).toMatchObject({
        canGoBack: false,
        step: {
          case: "choice",
          value: { title: "initial", options: ["login", "register", "other-options"] },
        },
      });
      expect((await choose(client, authId, "login")).step).toMatchObject({
        canGoBack: true,
        step: {
          case: "form",
          value: {
            title: "login",
            fields: [
              { name: "email", type: "email" },
              { name: "password", type: "password" },
            ],
          },
        },
      });
      expect((await client.stepBack({ authId })).step?.step.value).toMatchObject({
        title: "initial",
      });
      expect((await choose(client, authId, "register")).step?.step.value).toMatchObject({
        title: "register",
        fields: [
          { name: "email", type: "email" },
          { name: "username", type: "text" },
          { name: "password", type: "new-password" },
        ],
      });
      await client.stepBack({ authId });
      expect((await choose(client, authId, "other-options")).step).toMatchObject({
        canGoBack: true,
        step: { case: "choice", value: { title: "other-options", options: ["change-password"] } },
      });
      // StepBack where it cannot go back returns the current step unchanged.
      await client.stepBack({ authId });
      expect((await client.stepBack({ authId })).step).toMatchObject({
        canGoBack: false,
        step: { case: "choice", value: { title: "initial" } },
      });
    });

    it.each([
      ["empty", "", Code.InvalidArgument],
      ["malformed", "not an auth id", Code.NotFound],
      ["unknown", "A".repeat(32), Code.NotFound],
    ])("refuses an %s auth_id with h.bad-auth-id", async (_what, authId, code) => {
      await expectRpcError(app.client.nextStep({ authId }), code, "h.bad-auth-id");
      await expectRpcError(app.client.stepBack({ authId }), code, "h.bad-auth-id");
    });

    it("refuses choices and forms the step does not take, and stays put", async () => {
      const { client } = app;
      const { authId } = await client.beginAuth({});
      await client.nextStep({ authId });
      await expectRpcError(
        choose(client, authId, "admin"),
        Code.InvalidArgument,
        "h.bad-auth-choice",
      );
      await expectRpcError(
        submitForm(client, authId, []),
        Code.InvalidArgument,
        "h.bad-auth-choice",
      );
      await choose(client, authId, "login");
      await expectRpcError(
        choose(client, authId, "login"),
        Code.InvalidArgument,
        "h.bad-auth-choice",
      );
      await expectRpcError(
        submitForm(client, authId, [text("a@b.c")]),
        Code.InvalidArgument,
        "h.missing-form",
      );
      await expectRpcError(
        submitForm(client, authId, [{ field: { case: "number", value: 5n } }, bytes("x")]),
        Code.InvalidArgument,
        "h.missing-form",
      );
      expect((await client.nextStep({ authId })).step?.step.value).toMatchObject({
        title: "login",
      });
    });

    it.each([
      ["login", [text("nul\0@example.org"), bytes("a fine password")], "h.invalid-email"],
      ["login", [text("someone@example.org"), bytes("pass\0word")], "h.invalid-password"],
      [
        "register",
        [text("a@example.org"), text("nul\0name"), bytes("a fine password")],
        "h.invalid-username",
      ],
    ] as const)(
      "refuses a NUL character in a %s form with the field's identifier, before the database",
      async (form, fields, identifier) => {
        const authId = await openForm(app.client, form);
        await expectRpcError(
          submitForm(app.client, authId, [...fields]),
          Code.InvalidArgument,
          identifier,
        );
        expect((await app.client.nextStep({ authId })).step?.step.value).toMatchObject({
          title: form,
        });
      },
    );

    it("expires a flow after FLOW_TTL", async () => {
      const { client, clock } = app;
      const { authId } = await client.beginAuth({});
      await client.nextStep({ authId });
      clock.advance(15 * 60_000);
      const message = await expectRpcError(
        client.nextStep({ authId }),
        Code.FailedPrecondition,
        "h.bad-auth-id",
      );
      expect(message).toMatch(/expired/);
    });

    it("caps how many steps one flow may show", async () => {
      const { authId } = await app.client.beginAuth({});
      for (let i = 0; i < 256; i++) await app.client.nextStep({ authId });
      await expectRpcError(
        app.client.nextStep({ authId }),
        Code.ResourceExhausted,
        "hrpc.resource-exhausted",
      );
    });
  });

  describe("registration and login", () => {
    it("registers, checks the session, logs in again, and spends the auth_id", async () => {
      const { client } = app;
      const user = newUser();
      const authId = await openForm(client, "register");
      const res = await submitForm(client, authId, [
        text(user.email),
        text(user.username),
        bytes(user.password),
      ]);
      expect(res.step?.canGoBack).toBe(false);
      const session = res.step?.step.case === "session" ? res.step.step.value : undefined;
      expect(session?.userId).toBeGreaterThan(0n);
      expect(session?.userId).toBeLessThan(2n ** 63n);
      expect(session?.sessionToken).toMatch(/^[A-Za-z0-9_-]{43}$/);
      await client.checkLoggedIn({}, { headers: { authorization: session?.sessionToken ?? "" } });

      await expectRpcError(client.nextStep({ authId }), Code.FailedPrecondition, "h.bad-auth-id");
      await expectRpcError(client.stepBack({ authId }), Code.FailedPrecondition, "h.bad-auth-id");

      const again = await login(client, user.email.toUpperCase(), user.password);
      expect(again.userId).toBe(session?.userId);
      expect(again.sessionToken).not.toBe(session?.sessionToken);
    });

    it("stores only the argon2id hash and the token's SHA-256", async () => {
      const user = newUser();
      const session = await register(app.client, user);
      const { rows } = await database.db.query<{ password_hash: string }>(
        "SELECT password_hash FROM users WHERE id = $1",
        [session.userId],
      );
      expect(rows[0]?.password_hash).toMatch(/^\$argon2id\$/);
      const dump = JSON.stringify(
        (await database.db.query("SELECT encode(token_hash, 'hex') AS h FROM sessions")).rows,
      );
      expect(dump).not.toContain(session.sessionToken);
      const hex = Buffer.from(session.sessionToken).toString("hex");
      expect(dump).not.toContain(hex);
    });

    it("gives unknown emails and wrong passwords the same answer", async () => {
      const user = newUser();
      await register(app.client, user);
      const wrongPassword = await expectRpcError(
        login(app.client, user.email, "not the password"),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      const unknownEmail = await expectRpcError(
        login(app.client, "nobody@example.org", user.password),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      expect(unknownEmail).toBe(wrongPassword);
    });

    it.each([
      [
        "h.invalid-email",
        ["not-an-email", "gooduser", "correct horse battery"],
        "invalid email: expected an address such as name@example.org",
      ],
      [
        "h.invalid-username",
        ["ok@example.org", "x", "correct horse battery"],
        "invalid username: it must be 2 to 32 characters long",
      ],
      [
        "h.invalid-password",
        ["ok@example.org", "gooduser", "short"],
        "invalid password: it must be at least 8 characters long",
      ],
      [
        "h.invalid-password",
        ["ok@example.org", "gooduser", "password1"],
        "invalid password: it is one of the most commonly used passwords; choose another",
      ],
    ] as const)(
      "refuses with %s and writes nothing",
      async (identifier, [email, username, password], why) => {
        const users = await count("users");
        const authId = await openForm(app.client, "register");
        const message = await expectRpcError(
          submitForm(app.client, authId, [
            text(email ?? ""),
            text(username ?? ""),
            bytes(password ?? ""),
          ]),
          Code.InvalidArgument,
          identifier,
        );
        // Saying what to fix.
        expect(message).toBe(why);
        expect(await count("users")).toBe(users);
        // The flow is still on the form: the user can correct it and retry.
        const user = newUser();
        const res = await submitForm(app.client, authId, [
          text(user.email),
          text(user.username),
          bytes(user.password),
        ]);
        expect(res.step?.step.case).toBe("session");
      },
    );

    it("refuses a taken email or username, case-insensitively", async () => {
      const user = newUser();
      await register(app.client, user);
      const other = newUser();
      const sameEmail = await openForm(app.client, "register");
      await expectRpcError(
        submitForm(app.client, sameEmail, [
          text(user.email.toUpperCase()),
          text(other.username),
          bytes(other.password),
        ]),
        Code.AlreadyExists,
        "h.already-registered",
      );
      await expectRpcError(
        submitForm(app.client, sameEmail, [
          text(other.email),
          text(user.username.toUpperCase()),
          bytes(other.password),
        ]),
        Code.AlreadyExists,
        "h.already-registered",
      );
    });

    it("lets exactly one of many concurrent registrations of one email win", async () => {
      const users = await count("users");
      const sessions = await count("sessions");
      const email = newUser().email;
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, () => {
          const u = newUser();
          return register(app.client, { ...u, email });
        }),
      );
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      for (const r of results) {
        if (r.status === "rejected") {
          expect(String(r.reason)).toMatch(/already exists|already_exists/);
        }
      }
      expect(await count("users")).toBe(users + 1);
      expect(await count("sessions")).toBe(sessions + 1);
    });

    it("refuses registration when REGISTRATION=closed", async () => {
      const closed = await createTestApp(database.db, { env: { REGISTRATION: "closed" } });
      try {
        const { authId } = await closed.client.beginAuth({});
        const first = await closed.client.nextStep({ authId });
        expect(first.step?.step.value).toMatchObject({ options: ["login", "other-options"] });
        await expectRpcError(
          choose(closed.client, authId, "register"),
          Code.InvalidArgument,
          "h.bad-auth-choice",
        );
      } finally {
        await closed.close();
      }
    });
  });

  describe("password hashes", () => {
    it("verifies once per login attempt, against a dummy hash for unknown emails", async () => {
      const { hasher, calls } = countingHasher();
      const counted = await createTestApp(database.db, { hasher });
      try {
        const user = newUser();
        await register(counted.client, user);
        const stored = (
          await database.db.query<{ password_hash: string }>(
            "SELECT password_hash FROM users WHERE email_key = $1",
            [user.email.toLowerCase()],
          )
        ).rows[0]?.password_hash;
        calls.verify.length = 0;
        await expectRpcError(
          login(counted.client, "ghost@example.org", "whatever pw"),
          Code.Unauthenticated,
          "h.bad-password\nh.bad-email",
        );
        await expectRpcError(
          login(counted.client, user.email, "wrong password"),
          Code.Unauthenticated,
          "h.bad-password\nh.bad-email",
        );
        expect(calls.verify).toHaveLength(2);
        expect(calls.verify[0]).toMatch(/^\$argon2id\$v=19\$m=64,t=1,p=1\$/);
        expect(calls.verify[0]).not.toBe(stored);
        expect(calls.verify[1]).toBe(stored);
      } finally {
        await counted.close();
      }
    });

    it("upgrades a hash made with older parameters on the next login", async () => {
      const user = newUser();
      const { userId } = await register(app.client, user);
      const stronger = await createTestApp(database.db, {
        hasher: (await import("../src/auth/password-hasher.js")).createArgon2Hasher({
          memoryKib: 128,
          iterations: 2,
          parallelism: 1,
        }),
      });
      try {
        await login(stronger.client, user.email, user.password);
        const { rows } = await database.db.query<{ password_hash: string }>(
          "SELECT password_hash FROM users WHERE id = $1",
          [userId],
        );
        expect(rows[0]?.password_hash).toMatch(/^\$argon2id\$v=19\$m=128,t=2,p=1\$/);
        await login(stronger.client, user.email, user.password);
      } finally {
        await stronger.close();
      }
    });
  });

  describe("StreamSteps", () => {
    const collect = async (authId: string, signal?: AbortSignal): Promise<AuthStep[]> => {
      const steps: AuthStep[] = [];
      for await (const res of app.client.streamSteps({ authId }, signal ? { signal } : {})) {
        if (res.step) steps.push(res.step);
      }
      return steps;
    };
    const titles = (steps: AuthStep[]) =>
      steps.map((s) => (s.step.case === "session" ? "session" : (s.step.value?.title ?? "?")));

    /**
     * A StreamSteps call whose steps are kept as they arrive: `received(n)`
     * resolves with the first `n` once they have, so a test knows what a
     * stream had been sent before it makes the next step.
     */
    const watch = (authId: string) => {
      const steps: AuthStep[] = [];
      const waiting: { n: number; resolve: () => void }[] = [];
      const done = (async () => {
        for await (const res of app.client.streamSteps({ authId })) {
          if (!res.step) continue;
          steps.push(res.step);
          for (const w of waiting.filter((w) => steps.length >= w.n)) w.resolve();
        }
        return steps;
      })();
      return {
        done,
        received: (n: number) =>
          new Promise<AuthStep[]>((resolve, reject) => {
            const settle = () => resolve(steps.slice(0, n));
            if (steps.length >= n) return settle();
            waiting.push({ n, resolve: settle });
            done.then(
              () => reject(new Error(`the stream ended after ${steps.length} of ${n} steps`)),
              reject,
            );
          }),
      };
    };

    it("pushes every step to every stream, the queued ones first, and ends after the session", async () => {
      const { client } = app;
      const user = newUser();
      const { authId } = await client.beginAuth({});
      await client.nextStep({ authId }); // made before any stream attaches: queued in the log
      const early = watch(authId);
      // The queued step is the first the stream is sent, before any other exists.
      expect(titles(await early.received(1))).toEqual(["initial"]);
      await choose(client, authId, "login"); // pushed to the attached stream
      await client.stepBack({ authId });
      expect(titles(await early.received(3))).toEqual(["initial", "login", "initial"]);
      // A stream attaching now is sent the three made so far, in order, and only them.
      const late = watch(authId);
      expect(titles(await late.received(3))).toEqual(["initial", "login", "initial"]);
      await choose(client, authId, "register"); // pushed to both
      expect(titles(await late.received(4))).toEqual(["initial", "login", "initial", "register"]);
      await expectRpcError(
        submitForm(client, authId, [text("bad")]),
        Code.InvalidArgument,
        "h.missing-form",
      );
      const final = await submitForm(client, authId, [
        text(user.email),
        text(user.username),
        bytes(user.password),
      ]);
      // Each stream ends after the session, having had every step exactly once.
      const expected = ["initial", "login", "initial", "register", "session"];
      expect(titles(await early.done)).toEqual(expected);
      expect(titles(await late.done)).toEqual(expected);
      expect((await early.done).at(-1)?.step).toEqual(final.step?.step);
    });

    it("refuses an unknown auth_id", async () => {
      await expectRpcError(collect("B".repeat(32)), Code.NotFound, "h.bad-auth-id");
    });

    it("forgets a completed flow once its grace period is over", async () => {
      const user = newUser();
      const authId = await openForm(app.client, "register");
      await submitForm(app.client, authId, [
        text(user.email),
        text(user.username),
        bytes(user.password),
      ]);
      expect((await collect(authId)).at(-1)?.step.case).toBe("session");
      app.clock.advance(SPENT_FLOW_GRACE_MS);
      await expectRpcError(collect(authId), Code.FailedPrecondition, "h.bad-auth-id");
      await app.ctx.flows.sweep();
      await expectRpcError(collect(authId), Code.NotFound, "h.bad-auth-id");
    });
  });

  describe("sessions", () => {
    it.each([
      ["no header", undefined],
      ["an empty header", ""],
      ["a malformed token", "not a token"],
      ["an unknown token", "A".repeat(43)],
    ])("CheckLoggedIn refuses %s with h.blank-session", async (_what, token) => {
      await expectRpcError(
        app.client.checkLoggedIn(
          {},
          token === undefined ? {} : { headers: { authorization: token } },
        ),
        Code.Unauthenticated,
        "h.blank-session",
      );
    });

    it("refuses a session deleted in the database at once, though it was cached", async () => {
      const { sessionToken } = await register(app.client, newUser());
      const auth = { headers: { authorization: sessionToken } };
      await app.client.checkLoggedIn({}, auth); // now in the cache of validated sessions
      const heard = notices.sessionDeleted(sessionToken);
      await database.db.query(
        "DELETE FROM sessions WHERE token_hash = sha256(convert_to($1, 'UTF8'))",
        [sessionToken],
      );
      // The deletion is announced through NOTIFY, which the cache listens to.
      await heard;
      await expectRpcError(
        app.client.checkLoggedIn({}, auth),
        Code.Unauthenticated,
        "h.blank-session",
      );
    });

    it("accepts the raw token and Bearer <token>", async () => {
      const { sessionToken } = await register(app.client, newUser());
      for (const authorization of [sessionToken, `Bearer ${sessionToken}`]) {
        await expect(
          app.client.checkLoggedIn({}, { headers: { authorization } }),
          authorization,
        ).resolves.toBeDefined();
      }
      // The token after "Bearer " is the one checked: another is refused.
      await expectRpcError(
        app.client.checkLoggedIn({}, { headers: { authorization: `Bearer ${"A".repeat(43)}` } }),
        Code.Unauthenticated,
        "h.blank-session",
      );
    });

    it("expires after SESSION_IDLE_TTL unused, and writes last-seen at most hourly", async () => {
      const { sessionToken } = await register(app.client, newUser());
      const auth = { headers: { authorization: sessionToken } };
      const lastSeen = async () =>
        (
          await database.db.query<{ t: Date }>("SELECT max(last_seen_at) AS t FROM sessions")
        ).rows[0]?.t.getTime();
      const before = await lastSeen();
      app.clock.advance(30 * 60_000);
      await app.client.checkLoggedIn({}, auth);
      expect(await lastSeen()).toBe(before);
      app.clock.advance(31 * 60_000);
      await app.client.checkLoggedIn({}, auth);
      expect(await lastSeen()).toBe(app.clock.now());
      // Used every 29 days it stays alive; 30 days idle ends it.
      app.clock.advance(29 * 86_400_000);
      await app.client.checkLoggedIn({}, auth);
      app.clock.advance(30 * 86_400_000);
      await expectRpcError(
        app.client.checkLoggedIn({}, auth),
        Code.Unauthenticated,
        "h.blank-session",
      );
    });

    it("expires after SESSION_MAX_TTL however often it is used", async () => {
      const { sessionToken } = await register(app.client, newUser());
      const auth = { headers: { authorization: sessionToken } };
      // Used every 20 days (never idle), it still ends 180 days after login.
      for (let day = 20; day < 180; day += 20) {
        app.clock.advance(20 * 86_400_000);
        await app.client.checkLoggedIn({}, auth);
      }
      app.clock.advance(20 * 86_400_000);
      await expectRpcError(
        app.client.checkLoggedIn({}, auth),
        Code.Unauthenticated,
        "h.blank-session",
      );
      // The sweep deletes it (with whatever else has expired), and says how many it deleted.
      const rows = () =>
        database.db
          .query("SELECT 1 FROM sessions WHERE token_hash = sha256(convert_to($1, 'UTF8'))", [
            sessionToken,
          ])
          .then((r) => r.rows.length);
      expect(await rows()).toBe(1);
      const before = await count("sessions");
      const swept = await app.ctx.sessions.sweep();
      expect(await rows()).toBe(0);
      expect(await count("sessions")).toBe(before - swept);
    });
  });
});
