import { Code, createClient } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import type { AuthStep } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { backends, pglite, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import { bytes, choose, newUser, submitForm, text } from "./helpers/flow.js";
import { protocols, selfSignedCertificate, transportFactory } from "./helpers/server.js";

async function serve(
  database: TestDatabase,
  env: Record<string, string> = {},
): Promise<{ ctx: AppContext; server: RunningServer }> {
  const ctx = await createAppContext(
    testConfig({ SHUTDOWN_GRACE: "1s", CORS_ORIGINS: "https://app.example.org", ...env }),
    {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    },
  );
  return { ctx, server: await startServer(ctx) };
}

describe.each(backends)("one port, every protocol, on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  const transports = transportFactory();

  beforeAll(async () => {
    database = await backend.open();
    ({ ctx, server } = await serve(database));
  });
  afterAll(async () => {
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  describe.each(protocols)("%s", (protocol) => {
    const client = () => createClient(AuthService, transports.create(protocol, server.url));

    it("registers, streams every step, checks the session and logs in", async () => {
      const c = client();
      const user = newUser();
      const { authId } = await c.beginAuth({});
      const streamed: AuthStep[] = [];
      const stream = (async () => {
        for await (const res of c.streamSteps({ authId })) if (res.step) streamed.push(res.step);
      })();
      await c.nextStep({ authId });
      await choose(c, authId, "register");
      const done = await submitForm(c, authId, [
        text(user.email),
        text(user.username),
        bytes(user.password),
      ]);
      await stream;
      expect(streamed.map((s) => s.step.case)).toEqual(["choice", "form", "session"]);
      expect(streamed[2]).toEqual(done.step);
      const session = done.step?.step.case === "session" ? done.step.step.value : undefined;
      await c.checkLoggedIn({}, { headers: { authorization: session?.sessionToken ?? "" } });

      const { authId: loginId } = await c.beginAuth({});
      await c.nextStep({ authId: loginId });
      await choose(c, loginId, "login");
      const again = await submitForm(c, loginId, [text(user.email), bytes(user.password)]);
      expect(again.step?.step.case === "session" && again.step.step.value.userId).toBe(
        session?.userId,
      );
    });

    it("carries the Harmony identifier with every error", async () => {
      const c = client();
      await expectRpcError(c.checkLoggedIn({}), Code.Unauthenticated, "h.blank-session");
      await expectRpcError(c.nextStep({ authId: "C".repeat(32) }), Code.NotFound, "h.bad-auth-id");
      const { authId } = await c.beginAuth({});
      await c.nextStep({ authId });
      await choose(c, authId, "login");
      await expectRpcError(
        submitForm(c, authId, [text("nobody@example.org"), bytes("whatever it is")]),
        Code.Unauthenticated,
        "h.bad-password\nh.bad-email",
      );
      await expectRpcError(
        c.federate({ serverId: "other.example.org:443" }),
        Code.Unauthenticated,
        "h.blank-session",
      );
      await expectRpcError(
        c.loginFederated({ serverId: "other.example.org:443" }),
        Code.InvalidArgument,
        "h.bad-token",
      );
      expect((await c.key({})).key).toHaveLength(32);
    });
  });

  describe("plain HTTP", () => {
    it("serves Connect JSON to a plain POST, as curl sends it", async () => {
      const res = await fetch(`${server.url}/protocol.auth.v1.AuthService/BeginAuth`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      expect(res.status).toBe(200);
      expect((await res.json()) as unknown).toEqual({
        authId: expect.stringMatching(/^[\w-]{32}$/),
      });
    });

    it("answers a JSON error with its code and the hrpc.v1.Error detail", async () => {
      const res = await fetch(`${server.url}/protocol.auth.v1.AuthService/CheckLoggedIn`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      expect(res.status).toBe(401);
      const body = (await res.json()) as {
        code: string;
        details: { type: string; debug?: unknown }[];
      };
      expect(body.code).toBe("unauthenticated");
      expect(body.details[0]?.type).toBe("hrpc.v1.Error");
    });

    it("refuses a request larger than READ_MAX_BYTES", async () => {
      const res = await fetch(`${server.url}/protocol.auth.v1.AuthService/NextStep`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ authId: "x".repeat(70_000) }),
      });
      expect(res.status).toBe(429);
      expect(((await res.json()) as { code: string }).code).toBe("resource_exhausted");
    });

    it("refuses malformed JSON with invalid_argument", async () => {
      const res = await fetch(`${server.url}/protocol.auth.v1.AuthService/NextStep`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{not json",
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
    });

    it("answers CORS preflights for listed origins only, allowing Authorization", async () => {
      const preflight = (origin: string) =>
        fetch(`${server.url}/protocol.auth.v1.AuthService/CheckLoggedIn`, {
          method: "OPTIONS",
          headers: {
            origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,connect-protocol-version",
          },
        });
      const allowed = await preflight("https://app.example.org");
      expect(allowed.status).toBe(204);
      expect(allowed.headers.get("access-control-allow-origin")).toBe("https://app.example.org");
      expect(allowed.headers.get("access-control-allow-headers")?.toLowerCase()).toContain(
        "authorization",
      );
      const refused = await preflight("https://evil.example.org");
      expect(refused.headers.get("access-control-allow-origin")).toBeNull();

      const call = await fetch(`${server.url}/protocol.auth.v1.AuthService/BeginAuth`, {
        method: "POST",
        headers: { origin: "https://app.example.org", "content-type": "application/json" },
        body: "{}",
      });
      expect(call.headers.get("access-control-expose-headers")?.toLowerCase()).toContain(
        "grpc-status",
      );
    });

    it("reports health and readiness", async () => {
      expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
      const ready = await fetch(`${server.url}/readyz`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toMatchObject({
        status: "ready",
        schemaVersion: ctx.schemaVersion,
      });
    });
  });

  it("ends open streams with Unavailable on shutdown, and stops accepting", async () => {
    const own = await serve(database);
    const c = createClient(AuthService, transports.create("connect-json/http1", own.server.url));
    const { authId } = await c.beginAuth({});
    let first: () => void = () => {};
    const arrived = new Promise<void>((resolve) => {
      first = resolve;
    });
    const stream = (async () => {
      for await (const _ of c.streamSteps({ authId })) first();
    })();
    await c.nextStep({ authId });
    await arrived; // the stream is open and has had the first step
    const closing = own.server.close();
    await expectRpcError(stream, Code.Unavailable, "hrpc.unavailable");
    await closing;
    await own.ctx.close();
    await expect(fetch(`${own.server.url}/healthz`)).rejects.toThrow();
  });
});

describe("TLS", () => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  const tls = selfSignedCertificate();
  const transports = transportFactory({ ca: tls.cert });

  beforeAll(async () => {
    database = await pglite.open();
    ({ ctx, server } = await serve(database, { TLS_CERT: tls.certFile, TLS_KEY: tls.keyFile }));
  });
  afterAll(async () => {
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  it.each(protocols)("serves %s over TLS on the same port (ALPN)", async (protocol) => {
    expect(server.url).toMatch(/^https:\/\//);
    const c = createClient(AuthService, transports.create(protocol, server.url));
    const { authId } = await c.beginAuth({});
    const res = await c.nextStep({ authId });
    expect(res.step?.step.value).toMatchObject({ title: "initial" });
  });
});
