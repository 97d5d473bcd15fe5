import type { AddressInfo } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Cadenza, connectToCadenza } from "../examples/chat-server/cadenza-client.js";
import { createChatServer } from "../examples/chat-server/server.js";
import {
  followAccountEvents,
  type Profile,
  type ProfileStore,
} from "../examples/chat-server/worker.js";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AdminService } from "../src/gen/cadenza/admin/v1/admin_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { createFakeClock } from "./helpers/clock.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { newUser, register } from "./helpers/flow.js";

/**
 * The chat-server example in examples/chat-server, run as its README says,
 * against a real cadenza: both listeners on loopback, the internal one behind
 * INTERNAL_TOKEN, the example's own Connect client.
 */

const TOKEN = "example-internal-token-0123456789abcdef";
const DAY = 86_400_000;

/** The worker's store, in memory, counting how often each cursor was applied. */
function memoryStore() {
  let cursor = 0n;
  const profiles = new Map<bigint, Profile>();
  const applied = new Map<bigint, number>();
  let resyncs = 0;
  const waiters: { until: () => boolean; resolve: () => void }[] = [];
  const wake = () => {
    for (const w of [...waiters]) {
      if (w.until()) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  const store: ProfileStore = {
    cursor: async () => cursor,
    async apply(c, userId, change) {
      applied.set(c, (applied.get(c) ?? 0) + 1);
      if (change === "deleted") profiles.delete(userId);
      else if (change !== undefined) profiles.set(userId, change);
      cursor = c;
      wake();
    },
    userIds: async () => [...profiles.keys()],
    async replaceAll(c, all) {
      resyncs++;
      profiles.clear();
      for (const [id, p] of all) profiles.set(id, p);
      cursor = c;
      wake();
    },
  };
  return {
    store,
    profiles,
    applied,
    resyncs: () => resyncs,
    cursor: () => cursor,
    /** Resolves once `until` holds after an event or a resync (at once if it holds now). */
    until(until: () => boolean): Promise<void> {
      if (until()) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ until, resolve }));
    },
  };
}

describe.each(backends)("the chat-server example against cadenza on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  let cadenza: Cadenza;
  let chat: ReturnType<typeof createChatServer>;
  let chatUrl: string;
  const clock = createFakeClock(Date.now());

  const auth = () =>
    createClient(AuthService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  const admin = () =>
    createClient(
      AdminService,
      createConnectTransport({
        baseUrl: server.internalUrl,
        httpVersion: "1.1",
        interceptors: [
          (next) => (req) => {
            req.header.set("authorization", `Bearer ${TOKEN}`);
            return next(req);
          },
        ],
      }),
    );
  const me = async (authorization?: string) => {
    const res = await fetch(`${chatUrl}/me`, {
      headers: authorization === undefined ? {} : { authorization },
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };

  beforeAll(async () => {
    database = await backend.open();
    ctx = await createAppContext(testConfig({ INTERNAL_TOKEN: TOKEN }), {
      db: database.db,
      clock,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    });
    server = await startServer(ctx);
    cadenza = connectToCadenza({ baseUrl: server.internalUrl, token: TOKEN });
    chat = createChatServer(cadenza);
    await new Promise<void>((resolve) => chat.listen(0, "127.0.0.1", resolve));
    chatUrl = `http://127.0.0.1:${(chat.address() as AddressInfo).port}`;
  });
  afterEach(() => clock.reset());
  afterAll(async () => {
    chat?.closeAllConnections();
    await new Promise((resolve) => chat?.close(resolve));
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  it("answers GET /me with the session's user, and 401 h.blank-session for a bad token", async () => {
    const user = newUser();
    const { userId, sessionToken } = await register(auth(), user);
    const ok = await me(sessionToken);
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({
      userId: userId.toString(),
      username: user.username,
      homeserver: "",
    });
    expect(Date.parse(ok.body.sessionExpiresAt as string)).toBeGreaterThan(clock.now());

    for (const bad of [undefined, "", "not-a-session", `${sessionToken}x`]) {
      expect(await me(bad)).toEqual({ status: 401, body: { identifier: "h.blank-session" } });
    }
  });

  it("answers 500, not 401, when its INTERNAL_TOKEN is wrong (the chat server's fault)", async () => {
    const { sessionToken } = await register(auth(), newUser());
    const misconfigured = createChatServer(
      connectToCadenza({ baseUrl: server.internalUrl, token: "wrong" }),
    );
    await new Promise<void>((resolve) => misconfigured.listen(0, "127.0.0.1", resolve));
    try {
      const port = (misconfigured.address() as AddressInfo).port;
      const res = await fetch(`http://127.0.0.1:${port}/me`, {
        headers: { authorization: sessionToken },
      });
      expect(res.status).toBe(500);
    } finally {
      misconfigured.closeAllConnections();
      await new Promise((resolve) => misconfigured.close(resolve));
    }
  });

  it("keeps profiles in step from a stored cursor: each event once, across a restart and a resync", async () => {
    const { store, profiles, applied, resyncs, cursor, until } = memoryStore();
    const start = () => {
      const abort = new AbortController();
      const done = followAccountEvents(cadenza, store, {
        signal: abort.signal,
        current: (id) => profiles.get(id),
      });
      return async () => {
        abort.abort();
        await done;
      };
    };

    // Running: registrations, a rename and a deletion reach the profiles.
    let stop = start();
    const a = newUser();
    const b = newUser();
    const ra = await register(auth(), a);
    const rb = await register(auth(), b);
    await until(() => profiles.has(ra.userId) && profiles.has(rb.userId));
    const renamed = `${a.username}-2`.slice(0, 32);
    await admin().renameUser({ userId: ra.userId, username: renamed });
    await admin().deleteUser({ userId: rb.userId });
    await until(() => profiles.get(ra.userId)?.username === renamed && !profiles.has(rb.userId));
    await stop();

    // Stopped: what happens meanwhile is applied after the restart, from the stored cursor.
    const stoppedAt = cursor();
    const c = await register(auth(), newUser());
    const d = await register(auth(), newUser());
    stop = start();
    await until(() => profiles.has(c.userId) && profiles.has(d.userId));
    expect(cursor()).toBeGreaterThan(stoppedAt);
    expect([...applied.values()].every((n) => n === 1)).toBe(true);
    expect(resyncs()).toBe(0);
    await stop();

    // Away longer than ACCOUNT_EVENT_RETENTION: the worker resyncs with GetUsers, then goes on.
    await admin().renameUser({ userId: c.userId, username: `${renamed}-3`.slice(0, 32) });
    clock.advance(31 * DAY);
    try {
      await ctx.lifecycle.runJobs();
      stop = start();
      await until(() => resyncs() === 1);
      expect(profiles.get(c.userId)?.username).toBe(`${renamed}-3`.slice(0, 32));
      expect(profiles.has(rb.userId)).toBe(false);
      const e = await register(auth(), newUser());
      await until(() => profiles.has(e.userId));
      await stop();
    } finally {
      clock.advance(-31 * DAY);
    }
  });
});
