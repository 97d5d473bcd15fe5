import { createPublicKey, verify as nodeVerify } from "node:crypto";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { sha256 } from "../src/auth/random-ids.js";
import { unknownCaller } from "../src/caller.js";
import type { StreamAccountEventsResponse } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { backends, postgresBackend, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError, rpcError } from "./helpers/errors.js";
import { newUser, register } from "./helpers/flow.js";
import { watchNotifications } from "./helpers/notifications.js";

const DAY = 86_400_000;

/** Collects `n` events from StreamAccountEvents after `after`, then stops the stream. */
async function collect(app: TestApp, after: bigint, n: number) {
  const abort = new AbortController();
  const got: StreamAccountEventsResponse[] = [];
  try {
    for await (const res of app.homeserver.streamAccountEvents(
      { after },
      { signal: abort.signal },
    )) {
      got.push(res);
      if (got.length === n) break;
    }
  } finally {
    abort.abort();
  }
  return got;
}

describe.each(backends)("HomeserverService on $name", (backend) => {
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

  describe("Introspect", () => {
    /** What CheckLoggedIn and Introspect answer for one token: both succeed or both fail alike. */
    async function both(token: string) {
      const checked = await rpcError(
        app.client.checkLoggedIn({}, { headers: { authorization: token } }),
      ).catch(() => "ok" as const);
      const introspected = await rpcError(app.homeserver.introspect({ sessionToken: token })).catch(
        () => "ok" as const,
      );
      return { checked, introspected };
    }

    it("names the user and the session's times for a valid token", async () => {
      const user = newUser();
      const before = app.clock.now();
      const { userId, sessionToken } = await register(app.client, user);
      const res = await app.homeserver.introspect({ sessionToken });
      expect(res).toMatchObject({
        userId,
        username: user.username,
        homeserver: "",
        foreignUserId: 0n,
      });
      expect(res.sessionId).toMatch(/^[0-9a-f-]{36}$/);
      const ms = (t: Timestamp | undefined) => (t ? timestampDate(t).getTime() : undefined);
      expect(ms(res.createdAt)).toBe(before);
      expect(ms(res.lastUsedAt)).toBe(before);
      // The idle end (30 days) comes before the absolute one (180 days).
      expect(ms(res.expiresAt)).toBe(before + 30 * DAY);
      expect(await both(sessionToken)).toEqual({ checked: "ok", introspected: "ok" });
    });

    it.each([
      ["missing", ""],
      ["malformed", "not a token"],
      ["unknown", "A".repeat(43)],
    ])("refuses a %s token with h.blank-session, as CheckLoggedIn does", async (_, token) => {
      const { checked, introspected } = await both(token);
      expect(introspected).toMatchObject({
        code: Code.Unauthenticated,
        identifier: "h.blank-session",
      });
      expect(checked).toMatchObject({ code: Code.Unauthenticated, identifier: "h.blank-session" });
    });

    it("refuses an expired and a revoked session exactly when CheckLoggedIn does", async () => {
      const expiring = await register(app.client, newUser());
      const revoked = await register(app.client, newUser());
      // Cache both, then revoke one behind the cache's back and let the other go idle.
      await app.homeserver.introspect({ sessionToken: revoked.sessionToken });
      await database.db.query("DELETE FROM sessions WHERE token_hash = $1", [
        sha256(revoked.sessionToken),
      ]);
      app.clock.advance(30 * DAY);
      try {
        for (const token of [expiring.sessionToken, revoked.sessionToken]) {
          const { checked, introspected } = await both(token);
          expect(introspected).toMatchObject({ identifier: "h.blank-session" });
          expect(checked).toEqual(introspected);
        }
      } finally {
        app.clock.advance(-30 * DAY);
      }
    });

    it("names a federated user's homeserver and their ID there", async () => {
      const foreign = await database.db.transaction(async (tx) => {
        const user = await app.ctx.stores.foreignUsers.upsert(tx, {
          id: 77_000_000_000n + BigInt(Math.floor(Math.random() * 1e6)),
          homeserver: "chat.example.org:2289",
          foreignUserId: 2n ** 64n - 5n,
          username: "far-away",
          avatar: undefined,
          createdAt: app.clock.now(),
        });
        return { id: user.id, token: await app.ctx.sessions.create(tx, user.id, unknownCaller) };
      });
      const res = await app.homeserver.introspect({ sessionToken: foreign.token });
      expect(res).toMatchObject({
        userId: foreign.id,
        username: "far-away",
        homeserver: "chat.example.org:2289",
        foreignUserId: 2n ** 64n - 5n,
      });
      expect(await both(foreign.token)).toEqual({ checked: "ok", introspected: "ok" });
    });

    it("carries a rename at once, though the session was cached", async () => {
      const { userId, sessionToken } = await register(app.client, newUser());
      await app.homeserver.introspect({ sessionToken });
      const heard = notices.userChanged(userId);
      await database.db.query("UPDATE users SET username = $2, username_key = $2 WHERE id = $1", [
        userId,
        `renamed${userId}`,
      ]);
      await heard; // the NOTIFY the cache listens to
      expect((await app.homeserver.introspect({ sessionToken })).username).toBe(`renamed${userId}`);
    });
  });

  describe("GetUsers", () => {
    it("answers the known users and leaves unknown IDs out, with the current cursor", async () => {
      const a = newUser();
      const b = newUser();
      const ra = await register(app.client, a);
      const rb = await register(app.client, b);
      const { users, cursor } = await app.homeserver.getUsers({
        userIds: [ra.userId, 12345n, rb.userId, 2n ** 64n - 1n],
      });
      expect(users.map((u) => [u.userId, u.username, u.homeserver, u.disabled]).sort()).toEqual(
        [
          [ra.userId, a.username, "", false],
          [rb.userId, b.username, "", false],
        ].sort(),
      );
      // b's registration is the newest event, and the cursor names it.
      const events = await collect(app, cursor - 1n, 1);
      expect(events[0]).toMatchObject({ cursor, userId: rb.userId });
    });

    it("refuses more than 1,000 IDs", async () => {
      await expectRpcError(
        app.homeserver.getUsers({ userIds: Array.from({ length: 1001 }, (_, i) => BigInt(i + 1)) }),
        Code.InvalidArgument,
        "h.too-many-user-ids",
      );
    });
  });

  describe("StreamAccountEvents", () => {
    let head = 0n;
    beforeEach(async () => {
      head = (await app.homeserver.getUsers({})).cursor;
    });

    it("delivers each registration once, in order, and resumes from the last cursor", async () => {
      const users = [newUser(), newUser(), newUser()];
      const ids: bigint[] = [];
      for (const u of users) ids.push((await register(app.client, u)).userId);
      const first = await collect(app, head, 2);
      expect(first.map((e) => [e.userId, e.event.case, e.event.value])).toEqual([
        [ids[0], "registered", expect.objectContaining({ username: users[0]?.username })],
        [ids[1], "registered", expect.objectContaining({ username: users[1]?.username })],
      ]);
      // A consumer that reconnects with the last cursor it saw gets what follows, once.
      const rest = await collect(app, first[1]?.cursor ?? 0n, 1);
      expect(rest.map((e) => e.userId)).toEqual([ids[2]]);
      expect((rest[0]?.cursor ?? 0n) > (first[1]?.cursor ?? 0n)).toBe(true);
    });

    it("pushes an event that commits while the stream waits", async () => {
      const streamed = collect(app, head, 1);
      const { userId } = await register(app.client, newUser());
      expect((await streamed).map((e) => e.userId)).toEqual([userId]);
    });

    it("refuses a cursor older than ACCOUNT_EVENT_RETENTION, and GetUsers' cursor resumes", async () => {
      const { userId } = await register(app.client, newUser());
      app.clock.advance(31 * DAY);
      try {
        const eventsOf = async (id: bigint) =>
          (await database.db.query("SELECT 1 FROM account_events WHERE user_id = $1", [id])).rows
            .length;
        expect(await eventsOf(userId)).toBe(1);
        await app.ctx.lifecycle.runJobs();
        // Its registration is older than the retention now: swept.
        expect(await eventsOf(userId)).toBe(0);
        await expectRpcError(
          collect(app, head, 1),
          Code.FailedPrecondition,
          "h.account-events-expired",
        );
        const { users, cursor } = await app.homeserver.getUsers({ userIds: [userId] });
        expect(users.map((u) => u.userId)).toEqual([userId]);
        const next = register(app.client, newUser());
        const [event] = await collect(app, cursor, 1);
        expect(event?.userId).toBe((await next).userId);
      } finally {
        app.clock.advance(-31 * DAY);
      }
    });

    it("refuses a cursor newer than any event (a restored database)", async () => {
      await expectRpcError(
        collect(app, head + 1000n, 1),
        Code.FailedPrecondition,
        "h.account-events-expired",
      );
    });
  });

  describe("SignToken", () => {
    it("signs the bytes with the key Key publishes", async () => {
      const data = new TextEncoder().encode("sync from the chat server");
      const token = await app.homeserver.signToken({ data });
      const { key } = await app.client.key({});
      const publicKey = createPublicKey({
        key: Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), key]),
        format: "der",
        type: "spki",
      });
      expect(token?.data).toEqual(data);
      expect(nodeVerify(null, data, publicKey, token?.sig ?? new Uint8Array())).toBe(true);
    });
  });

  describe("the internal token", () => {
    it("is required, compared exactly, when INTERNAL_TOKEN is set", async () => {
      const guarded = await createTestApp(database.db, {
        env: { INTERNAL_TOKEN: "s3cret-internal-token-value" },
      });
      try {
        for (const authorization of [
          undefined,
          "Bearer wrong-token-of-same-size!!",
          "s3cret-internal-token-value",
        ]) {
          await expectRpcError(
            guarded.homeserver.getUsers({}, authorization ? { headers: { authorization } } : {}),
            Code.Unauthenticated,
            "h.bad-internal-token",
          );
        }
        const ok = await guarded.homeserver.getUsers(
          {},
          { headers: { authorization: "Bearer s3cret-internal-token-value" } },
        );
        expect(ok.cursor).toBeGreaterThanOrEqual(0n);
      } finally {
        await guarded.close();
      }
    });
  });
});

describe.skipIf(postgresBackend === undefined)(
  "HomeserverService across replicas on Postgres",
  () => {
    let database: TestDatabase;
    let a: TestApp;
    let b: TestApp;
    let onB: ReturnType<typeof watchNotifications>;

    beforeAll(async () => {
      database = await (postgresBackend as NonNullable<typeof postgresBackend>).open();
      // Two contexts on one database: separate LISTEN connections, as two processes have.
      onB = watchNotifications(database.db);
      a = await createTestApp(database.db);
      b = await createTestApp(onB.db);
    });
    afterAll(async () => {
      await a?.close();
      await b?.close();
      await database?.close();
    });

    it("refuses on B a session deleted on A, though B had it cached", async () => {
      const { sessionToken } = await register(a.client, newUser());
      await b.homeserver.introspect({ sessionToken });
      const heard = onB.sessionDeleted(sessionToken);
      await database.db.query("DELETE FROM sessions WHERE token_hash = $1", [sha256(sessionToken)]);
      await heard; // B's LISTEN connection got the NOTIFY, and its cache forgot the session
      await expectRpcError(
        b.homeserver.introspect({ sessionToken }),
        Code.Unauthenticated,
        "h.blank-session",
      );
    });

    it("streams on B, exactly once and in order, 1,000 registrations made concurrently on A and B", async () => {
      const { cursor: head } = await a.homeserver.getUsers({});
      const streamed = collect(b, head, 1000);
      // 1,000 registrations, alternating replicas, 128 in flight at a time: each
      // replica's pool holds 10 connections, and an unbounded fan-out would only
      // wait past DATABASE_CONNECT_TIMEOUT for one on a loaded machine.
      const ids: { userId: bigint }[] = [];
      let next = 0;
      await Promise.all(
        Array.from({ length: 128 }, async () => {
          while (next < 1000) {
            const i = next++;
            ids.push(await register((i % 2 ? a : b).client, newUser()));
          }
        }),
      );
      const events = await streamed;
      const cursors = events.map((e) => e.cursor);
      expect([...cursors].sort((x, y) => (x < y ? -1 : 1))).toEqual(cursors);
      expect(new Set(cursors).size).toBe(1000);
      expect(new Set(events.map((e) => e.userId))).toEqual(new Set(ids.map((r) => r.userId)));
      // A consumer that resumes halfway sees exactly the second half.
      const half = await collect(a, cursors[499] ?? 0n, 500);
      expect(half.map((e) => e.cursor)).toEqual(cursors.slice(500));
    }, 120_000);
  },
);
