import { fromBinary } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { loadConfig } from "../src/config.js";
import { AccountService } from "../src/gen/cadenza/account/v1/account_pb.js";
import { AdminService } from "../src/gen/cadenza/admin/v1/admin_pb.js";
import { HomeserverService } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { ErrorSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { rpcError } from "./helpers/errors.js";
import { protocols, transportFactory } from "./helpers/server.js";

/**
 * The two ports serve disjoint services: the public one never answers the
 * homeserver's and operators' services, the internal one never the public
 * ones, on every protocol, as any unknown method is answered.
 */

const TOKEN = "ports-test-internal-token-0123456789";

describe("the public and the internal port", () => {
  const transports = transportFactory();
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;

  beforeAll(async () => {
    database = await pglite.open();
    ctx = await createAppContext(testConfig({ INTERNAL_TOKEN: TOKEN }), {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "silent" }),
      background: false,
    });
    server = await startServer(ctx);
  });
  afterAll(async () => {
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  const bearer = { headers: { authorization: `Bearer ${TOKEN}` } };

  it.each(protocols)("over %s, each answers only its own services", async (protocol) => {
    const onPublic = transports.create(protocol, server.url);
    const onInternal = transports.create(protocol, server.internalUrl);

    // The public port: AuthService and AccountService, nothing internal, token or not.
    expect((await createClient(AuthService, onPublic).key({})).key).toHaveLength(32);
    for (const call of [
      () => createClient(HomeserverService, onPublic).introspect({ sessionToken: "x" }, bearer),
      () => createClient(AdminService, onPublic).listUsers({}, bearer),
    ]) {
      expect((await rpcError(call())).codeName).toBe("Unimplemented");
    }

    // The internal port: HomeserverService and AdminService, none of the public services.
    expect((await createClient(AdminService, onInternal).listUsers({}, bearer)).users).toEqual([]);
    for (const call of [
      () => createClient(AuthService, onInternal).key({}),
      () => createClient(AuthService, onInternal).beginAuth({}),
      () => createClient(AccountService, onInternal).listSessions({}, bearer),
    ]) {
      expect((await rpcError(call())).codeName).toBe("Unimplemented");
    }
  });

  it("over hRPC, the public port answers the internal methods as unknown ones (404 hrpc.not-found)", async () => {
    const post = (base: string, path: string) =>
      fetch(`${base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/hrpc", authorization: `Bearer ${TOKEN}` },
        body: new Uint8Array(),
      });
    for (const path of [
      "/cadenza.homeserver.v1.HomeserverService/Introspect",
      "/cadenza.admin.v1.AdminService/ListUsers",
    ]) {
      const res = await post(server.url, path);
      expect([res.status, res.headers.get("content-type")], path).toEqual([
        404,
        "application/hrpc",
      ]);
      const error = fromBinary(ErrorSchema, new Uint8Array(await res.arrayBuffer()));
      expect(error.identifier).toBe("hrpc.not-found");
    }
    // The internal port does not speak hRPC at all: no route there.
    expect((await post(server.internalUrl, "/protocol.auth.v1.AuthService/Key")).status).toBe(404);
    // While the public port does serve its own over hRPC.
    expect((await post(server.url, "/protocol.auth.v1.AuthService/Key")).status).toBe(200);
  });

  it("logs one line per call at debug: method, protocol, code, duration, client address", async () => {
    const lines: string[] = [];
    const logged = await createAppContext(testConfig({ LOG_LEVEL: "debug" }), {
      db: database.db,
      hasher: fastHasher,
      logger: pino({ level: "debug" }, { write: (line: string) => lines.push(line) }),
      background: false,
    });
    const running = await startServer(logged);
    try {
      const client = createClient(AuthService, transports.create("grpc-web/http1", running.url));
      await client.key({});
      await rpcError(client.checkLoggedIn({}, { headers: { authorization: "not-a-token" } }));
      const calls = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === "rpc");
      expect(calls).toMatchObject([
        {
          level: 20,
          method: "Key",
          service: "protocol.auth.v1.AuthService",
          protocol: "grpc-web",
          code: "ok",
          address: "127.0.0.1",
        },
        { method: "CheckLoggedIn", protocol: "grpc-web", code: "unauthenticated" },
      ]);
      expect(typeof calls[0]?.durationMs).toBe("number");
      expect(lines.join("\n")).not.toContain("not-a-token");
    } finally {
      await running.close();
      await logged.close();
    }
  });

  it("refuses every internal call without the token, naming INTERNAL_TOKEN", async () => {
    const admin = createClient(
      AdminService,
      transports.create("connect-json/http1", server.internalUrl),
    );
    const error = await rpcError(admin.listUsers({}));
    expect(error.code).toBe(Code.Unauthenticated);
    expect(error.identifier).toBe("h.bad-internal-token");
    expect(error.message).toContain("INTERNAL_TOKEN");
  });

  it("will not start with the internal port beyond loopback and no INTERNAL_TOKEN, naming both", () => {
    expect(() => loadConfig({ INTERNAL_HOST: "0.0.0.0" })).toThrow(
      /INTERNAL_HOST=0\.0\.0\.0 is not a loopback address, so INTERNAL_TOKEN must be set/,
    );
    expect(loadConfig({ INTERNAL_HOST: "0.0.0.0", INTERNAL_TOKEN: TOKEN }).internal.host).toBe(
      "0.0.0.0",
    );
  });
});
