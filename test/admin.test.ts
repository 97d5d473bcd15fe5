import { toJsonString } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ListInvitesResponseSchema } from "../src/gen/cadenza/admin/v1/admin_pb.js";
import type { StreamAccountEventsResponse } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import { bytes, login, newUser, openForm, register, submitForm, text } from "./helpers/flow.js";

describe.each(backends)("AdminService on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;

  beforeAll(async () => {
    database = await backend.open();
    app = await createTestApp(database.db);
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  const auth = (token: string) => ({ headers: { authorization: token } });
  /** The account events after `after`, the first `n`. */
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
  const head = async () => (await app.homeserver.getUsers({})).cursor;

  it("lists and searches users a page at a time, and shows one by ID or username", async () => {
    const tag = `srch${Date.now().toString(36)}`;
    const made = [];
    for (let i = 0; i < 5; i++) {
      const u = { ...newUser(), username: `${tag}${i}` };
      made.push({ ...u, ...(await register(app.client, u)) });
    }
    const seen: bigint[] = [];
    const sizes: number[] = [];
    let pageToken = "";
    do {
      const page = await app.admin.listUsers({ query: tag.toUpperCase(), pageSize: 2, pageToken });
      sizes.push(page.users.length);
      seen.push(...page.users.map((u) => u.userId));
      pageToken = page.nextPageToken;
    } while (pageToken !== "" && sizes.length < 10);
    // Five matches in pages of two, the last page saying there is no next.
    expect(sizes).toEqual([2, 2, 1]);
    expect(seen.sort()).toEqual(made.map((m) => m.userId).sort());
    const one = made[3];
    if (!one) throw new Error("no user");
    const byId = await app.admin.getUser({ user: { case: "userId", value: one.userId } });
    const byName = await app.admin.getUser({
      user: { case: "username", value: one.username.toUpperCase() },
    });
    expect(byName.user).toEqual(byId.user);
    expect(byId.user).toMatchObject({ username: one.username, email: one.email, sessionCount: 1 });
    await expectRpcError(
      app.admin.getUser({ user: { case: "userId", value: 42n } }),
      Code.NotFound,
      "h.unknown-user",
    );
  });

  it("disables a user at once (no login, no session, cached or not) and enables them again", async () => {
    const user = newUser();
    const { userId, sessionToken } = await register(app.client, user);
    await app.client.checkLoggedIn({}, auth(sessionToken)); // now cached
    const from = await head();
    const disabled = await app.admin.disableUser({ userId });
    expect(disabled.user?.disabledAt).toBeDefined();
    // At once on this replica (others hear of it by NOTIFY).
    await expectRpcError(
      app.client.checkLoggedIn({}, auth(sessionToken)),
      Code.Unauthenticated,
      "h.blank-session",
    );
    await expectRpcError(
      app.homeserver.introspect({ sessionToken }),
      Code.Unauthenticated,
      "h.blank-session",
    );
    const authId = await openForm(app.client, "login");
    await expectRpcError(
      submitForm(app.client, authId, [text(user.email), bytes(user.password)]),
      Code.PermissionDenied,
      "h.user-disabled",
    );
    // Without the password, a disabled account looks like any other failure.
    const other = await openForm(app.client, "login");
    await expectRpcError(
      submitForm(app.client, other, [text(user.email), bytes("not the password")]),
      Code.Unauthenticated,
      "h.bad-password\nh.bad-email",
    );
    expect((await app.homeserver.getUsers({ userIds: [userId] })).users[0]?.disabled).toBe(true);
    await app.admin.enableUser({ userId });
    await app.client.checkLoggedIn({}, auth(sessionToken));
    await login(app.client, user.email, user.password);
    expect((await events(from, 2)).map((e) => [e.userId, e.event.case])).toEqual([
      [userId, "disabled"],
      [userId, "enabled"],
    ]);
  });

  it("deletes a user with their sessions; their email and username can be registered again", async () => {
    const user = newUser();
    const { userId, sessionToken } = await register(app.client, user);
    const from = await head();
    await app.admin.deleteUser({ userId });
    await expectRpcError(
      app.homeserver.introspect({ sessionToken }),
      Code.Unauthenticated,
      "h.blank-session",
    );
    const { rows } = await database.db.query("SELECT 1 FROM sessions WHERE user_id = $1", [userId]);
    expect(rows).toEqual([]);
    expect((await events(from, 1)).map((e) => [e.userId, e.event.case])).toEqual([
      [userId, "deleted"],
    ]);
    const again = await register(app.client, user);
    expect(again.userId).not.toBe(userId);
    await expectRpcError(app.admin.deleteUser({ userId }), Code.NotFound, "h.unknown-user");
  });

  it("renames a local user, refusing a taken or invalid name", async () => {
    const a = newUser();
    const b = newUser();
    const ra = await register(app.client, a);
    await register(app.client, b);
    const from = await head();
    const renamed = await app.admin.renameUser({ userId: ra.userId, username: `${a.username}x` });
    expect(renamed.user?.username).toBe(`${a.username}x`);
    expect((await app.homeserver.introspect({ sessionToken: ra.sessionToken })).username).toBe(
      `${a.username}x`,
    );
    const [event] = await events(from, 1);
    expect(event?.event).toEqual({
      case: "usernameChanged",
      value: expect.objectContaining({ oldUsername: a.username, username: `${a.username}x` }),
    });
    await expectRpcError(
      app.admin.renameUser({ userId: ra.userId, username: b.username.toUpperCase() }),
      Code.AlreadyExists,
      "h.already-registered",
    );
    await expectRpcError(
      app.admin.renameUser({ userId: ra.userId, username: "no spaces allowed" }),
      Code.InvalidArgument,
      "h.invalid-username",
    );
  });

  it("lists a user's sessions and revokes one or all, on the event stream too", async () => {
    const user = newUser();
    const first = await register(app.client, user);
    const second = await login(app.client, user.email, user.password);
    const third = await login(app.client, user.email, user.password);
    const { sessions } = await app.admin.listSessions({ userId: first.userId });
    expect(sessions).toHaveLength(3);
    const idOf = async (token: string) =>
      (await app.homeserver.introspect({ sessionToken: token })).sessionId;
    const secondId = await idOf(second.sessionToken);
    expect(sessions.map((s) => s.sessionId)).toContain(secondId);
    const from = await head();
    expect(
      (await app.admin.revokeSessions({ userId: first.userId, sessionIds: [secondId] })).sessionIds,
    ).toEqual([secondId]);
    await expectRpcError(
      app.client.checkLoggedIn({}, auth(second.sessionToken)),
      Code.Unauthenticated,
      "h.blank-session",
    );
    await app.client.checkLoggedIn({}, auth(third.sessionToken));
    const rest = [await idOf(first.sessionToken), await idOf(third.sessionToken)].sort();
    const all = await app.admin.revokeSessions({ userId: first.userId });
    expect([...all.sessionIds].sort()).toEqual(rest);
    for (const token of [first.sessionToken, third.sessionToken]) {
      await expectRpcError(
        app.client.checkLoggedIn({}, auth(token)),
        Code.Unauthenticated,
        "h.blank-session",
      );
    }
    const revoked = await events(from, 2);
    expect(revoked.map((e) => e.event.case)).toEqual(["sessionsRevoked", "sessionsRevoked"]);
    expect(revoked[0]?.event.value).toMatchObject({ sessionIds: [secondId] });
    await expectRpcError(
      app.admin.revokeSessions({ userId: first.userId, sessionIds: ["not-a-uuid"] }),
      Code.InvalidArgument,
      "h.bad-session-id",
    );
  });

  it("creates, lists and revokes invites, showing the code only once", async () => {
    const { invite, code } = await app.admin.createInvite({
      maxUses: 3,
      validForSeconds: 3600n,
      note: "for bob",
    });
    expect(code).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(invite).toMatchObject({ maxUses: 3, uses: 0, note: "for bob" });
    const listed = await app.admin.listInvites({});
    expect(listed.invites.map((i) => i.inviteId)).toContain(invite?.inviteId);
    expect(toJsonString(ListInvitesResponseSchema, listed)).not.toContain(code);
    await app.admin.revokeInvite({ inviteId: invite?.inviteId ?? "" });
    expect((await app.admin.listInvites({})).invites.map((i) => i.inviteId)).not.toContain(
      invite?.inviteId,
    );
    expect(
      (await app.admin.listInvites({ includeInactive: true })).invites.map((i) => i.inviteId),
    ).toContain(invite?.inviteId);
    await expectRpcError(
      app.admin.createInvite({ maxUses: 0, validForSeconds: 1n }),
      Code.InvalidArgument,
      "h.bad-invite",
    );
  });

  it("shows and rotates the server key, which Key then serves", async () => {
    const before = (await app.admin.getServerKey({})).key;
    expect(before?.publicKey).toEqual((await app.client.key({})).key);
    const rotated = (await app.admin.rotateServerKey({})).key;
    expect(rotated?.keyId).toBeGreaterThan(before?.keyId ?? 0);
    expect((await app.client.key({})).key).toEqual(rotated?.publicKey);
  });
});
