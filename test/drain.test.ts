import { performance } from "node:perf_hooks";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import { stepStreamPaths } from "./helpers/server.js";

/**
 * SHUTDOWN_DRAIN, as a load balancer sees it: from the moment shutdown
 * begins (what SIGTERM starts in src/main.ts), /readyz answers 503 on both
 * ports while calls are still served, for the whole drain; then the ports
 * close. (test/faults.test.ts sends a real SIGTERM to a process and checks
 * what follows the drain: streams ended with Unavailable, exit 0.)
 */

const DRAIN_MS = 600;

describe("the shutdown drain", () => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;

  beforeAll(async () => {
    database = await pglite.open();
    ctx = await createAppContext(testConfig({ SHUTDOWN_DRAIN: `${DRAIN_MS}ms` }), {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    });
    server = await startServer(ctx);
  });
  afterAll(async () => {
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  it("turns /readyz 503 at once, serves calls for SHUTDOWN_DRAIN, then stops listening", async () => {
    const client = createClient(
      AuthService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    const ready = async (url: string) => (await fetch(`${url}/readyz`)).status;
    expect(await ready(server.url)).toBe(200);
    expect(await ready(server.internalUrl)).toBe(200);

    const began = performance.now();
    let closedAt = 0;
    const closed = server.close().then(() => {
      closedAt = performance.now();
    });
    expect(await ready(server.url)).toBe(503);
    expect(await ready(server.internalUrl)).toBe(503);
    expect(await fetch(`${server.url}/healthz`).then((r) => r.status)).toBe(200);

    // New calls, on new connections too, are served while the drain lasts. A few,
    // begun in its first half: one begun near its end could still be in flight
    // when the listener closes, on a busy machine, and be cut off as it should.
    let served = 0;
    while (served < 3 && closedAt === 0 && performance.now() - began < DRAIN_MS / 2) {
      const fresh = createClient(
        AuthService,
        createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
      );
      const { authId } = await fresh.beginAuth({});
      await client.nextStep({ authId });
      served++;
    }
    expect(served).toBeGreaterThan(0);
    expect(closedAt).toBe(0);

    await closed;
    // Timers never fire early; a millisecond of rounding aside.
    expect(closedAt - began).toBeGreaterThanOrEqual(DRAIN_MS - 1);
    await expect(fetch(`${server.url}/readyz`)).rejects.toThrow();
    await expect(fetch(`${server.internalUrl}/readyz`)).rejects.toThrow();
  });
});

describe.each(stepStreamPaths)(
  "an open stream through the drain, on the %s path",
  (streamSteps) => {
    it("goes on getting steps while /readyz answers 503, and ends with Unavailable after", async () => {
      const database = await pglite.open();
      const ctx = await createAppContext(testConfig({ SHUTDOWN_DRAIN: `${DRAIN_MS}ms` }), {
        db: database.db,
        hasher: fastHasher,
        logger: pino({ level: "silent" }),
        background: false,
      });
      try {
        const server = await startServer(ctx, { streamSteps });
        const client = createClient(
          AuthService,
          createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
        );
        const authId = await ctx.flows.begin();
        await ctx.flows.advance(authId, { kind: "current" });
        const it = client.streamSteps({ authId })[Symbol.asyncIterator]();
        expect((await it.next()).value?.step?.step.case).toBe("choice");

        let closedAt = 0;
        const began = performance.now();
        const closed = server.close().then(() => {
          closedAt = performance.now();
        });
        expect((await fetch(`${server.url}/readyz`)).status).toBe(503);
        // A step shown during the drain still reaches the stream.
        await ctx.flows.advance(authId, { kind: "choice", choice: "login" });
        expect((await it.next()).value?.step?.step.case).toBe("form");
        expect(closedAt).toBe(0);

        await expectRpcError(it.next(), Code.Unavailable, "hrpc.unavailable");
        expect(performance.now() - began).toBeGreaterThanOrEqual(DRAIN_MS - 1);
        await closed;
      } finally {
        await ctx.close();
        await database.close();
      }
    });
  },
);
