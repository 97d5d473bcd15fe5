import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { rpcError } from "./helpers/errors.js";
import { bytes, login, newUser, openForm, register, submitForm, text } from "./helpers/flow.js";

/**
 * `/metrics` on the internal port after a known sequence of calls on the
 * public one: every counter moves by exactly what the calls did.
 */

const TOKEN = "metrics-test-internal-token-0123456789abcdef";

/** The samples of an exposition text: `name{labels}` → value. */
function samples(exposition: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of exposition.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

describe.each(backends)("/metrics on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;

  const scrape = async (token: string | null = TOKEN) =>
    fetch(`${server.internalUrl}/metrics`, {
      headers: token === null ? {} : { authorization: `Bearer ${token}` },
    });
  const read = async () => samples(await (await scrape()).text());

  beforeAll(async () => {
    database = await backend.open();
    ctx = await createAppContext(
      testConfig({ INTERNAL_TOKEN: TOKEN, LIMIT_BEGIN_AUTH: "1000/1h" }),
      {
        db: database.db,
        hasher: fastHasher,
        logger: pino({ level: "silent" }),
        background: false,
      },
    );
    server = await startServer(ctx);
  });
  afterAll(async () => {
    await server?.close();
    await ctx?.close();
    await database?.close();
  });

  it("needs the internal token, and is not served on the public port", async () => {
    expect((await scrape(null)).status).toBe(401);
    expect((await scrape("wrong-token-wrong-token-wrong-token-0000")).status).toBe(401);
    const ok = await scrape();
    expect(ok.status).toBe(200);
    expect(ok.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    expect((await fetch(`${server.url}/metrics`)).status).toBe(404);
  });

  it("counts exactly the calls, logins, registrations and streams of a known sequence", async () => {
    const connect = createClient(
      AuthService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    const grpcWeb = createClient(
      AuthService,
      createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    const before = await read();
    const delta = (after: Map<string, number>, key: string) =>
      (after.get(key) ?? 0) - (before.get(key) ?? 0);

    const user = newUser();
    await register(connect, user); // BeginAuth, NextStep ×3 (initial step, choice, form)
    await login(connect, user.email, user.password); // the same
    const authId = await openForm(grpcWeb, "login"); // BeginAuth, NextStep over gRPC-Web
    const wrong = await rpcError(
      submitForm(grpcWeb, authId, [text(user.email), bytes("not the password")]),
    );
    expect(wrong.identifier).toBe("h.bad-password\nh.bad-email");

    // One open stream, counted while it is open.
    const abort = new AbortController();
    const { authId: streamed } = await connect.beginAuth({});
    const stream = connect.streamSteps({ authId: streamed }, { signal: abort.signal });
    const first = stream[Symbol.asyncIterator]().next();
    await connect.nextStep({ authId: streamed });
    await first;
    const open = await read();
    expect(open.get('cadenza_open_streams{transport="connect"}')).toBe(1);
    abort.abort();

    const after = await read();
    const calls = (system: string, method: string, code: string) =>
      delta(
        after,
        `rpc_server_call_duration_seconds_count{rpc_system="${system}",rpc_service="protocol.auth.v1.AuthService",rpc_method="${method}",rpc_response_status_code="${code}"}`,
      );
    expect({
      connectBegin: calls("connect_rpc", "BeginAuth", "ok"),
      connectNext: calls("connect_rpc", "NextStep", "ok"),
      grpcWebBegin: calls("grpc_web", "BeginAuth", "ok"),
      grpcWebNext: calls("grpc_web", "NextStep", "ok"),
      grpcWebUnauthenticated: calls("grpc_web", "NextStep", "unauthenticated"),
      logins: delta(after, 'cadenza_logins_total{outcome="success"}'),
      badLogins: delta(after, 'cadenza_logins_total{outcome="bad_credentials"}'),
      registrations: delta(after, 'cadenza_registrations_total{outcome="success"}'),
    }).toEqual({
      connectBegin: 3,
      connectNext: 7, // openForm is two (the initial step, the choice), the form one more
      grpcWebBegin: 1,
      grpcWebNext: 2,
      grpcWebUnauthenticated: 1,
      logins: 1,
      badLogins: 1,
      registrations: 1,
    });
    // The flows begun and not finished: the gRPC-Web login and the streamed one.
    expect(delta(after, "cadenza_live_flows")).toBe(2);
    // Process metrics from prom-client's defaults.
    expect(after.has("process_cpu_seconds_total")).toBe(true);
    expect(after.has("nodejs_eventloop_lag_seconds")).toBe(true);
  });
});
