import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import type { AuthStep } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { postgresBackend, type TestDatabase } from "./helpers/databases.js";
import { bytes, choose, newUser, submitForm, text } from "./helpers/flow.js";
import { runCli, type ServerProcess, startServerProcess } from "./helpers/process.js";
import { onFreePort, transportFactory } from "./helpers/server.js";

const transports = transportFactory();
const running: ServerProcess[] = [];
const start = async (env: Record<string, string>) => {
  const p = await startServerProcess(env);
  running.push(p);
  return p;
};
const clientFor = (
  p: ServerProcess,
  protocol: "connect-json/http1" | "grpc/http2" = "connect-json/http1",
) => createClient(AuthService, transports.create(protocol, p.url));

afterAll(async () => {
  transports.closeAll();
  await Promise.all(running.map((p) => p.stop()));
});

describe("embedded PGlite", () => {
  it("starts with npm start's entry point, keeps a flow across a restart, and stops on SIGTERM", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "cadenza-data-"));
    const first = await start({ DATA_DIR: dataDir });
    expect((await fetch(`${first.url}/readyz`)).status).toBe(200);
    const a = clientFor(first);
    const { authId } = await a.beginAuth({});
    await a.nextStep({ authId });
    await choose(a, authId, "register");
    expect(await first.stop()).toBe(0);
    expect(first.logs.some((l) => l.msg === "stopped")).toBe(true);

    const second = await start({ DATA_DIR: dataDir });
    const b = clientFor(second);
    expect((await b.nextStep({ authId })).step?.step.value).toMatchObject({ title: "register" });
    const user = newUser();
    const done = await submitForm(b, authId, [
      text(user.email),
      text(user.username),
      bytes(user.password),
    ]);
    expect(done.step?.step.case).toBe("session");
    expect(await second.stop()).toBe(0);
  });

  it("refuses to start on a bad configuration, naming every problem", async () => {
    await expect(start({ PORT: "nope", FLOW_TTL: "later" })).rejects.toThrow(
      /exited with 2[\s\S]*PORT=nope[\s\S]*FLOW_TTL=later/,
    );
  });
});

describe.skipIf(postgresBackend === undefined)("two processes on one Postgres", () => {
  let database: TestDatabase;
  afterAll(async () => {
    await database?.close();
  });

  it("migrates once under the lock, and a stream on B gets every step made on A", async () => {
    database = await (postgresBackend as NonNullable<typeof postgresBackend>).open({
      migrate: false,
    });
    const env = { DATABASE_URL: database.url ?? "" };
    const [a, b] = await Promise.all([start(env), start(env)]);
    const migrated = [...a.logs, ...b.logs].filter((l) => l.msg === "database migrated");
    expect(migrated).toHaveLength(1);

    for (const protocol of ["connect-json/http1", "grpc/http2"] as const) {
      const onA = clientFor(a, protocol);
      const onB = clientFor(b, protocol);
      const user = newUser();
      const { authId } = await onA.beginAuth({});
      const streamed: AuthStep[] = [];
      const stream = (async () => {
        for await (const res of onB.streamSteps({ authId })) if (res.step) streamed.push(res.step);
      })();
      await onA.nextStep({ authId });
      await choose(onA, authId, "login");
      await onB.stepBack({ authId });
      await choose(onA, authId, "register");
      const done = await submitForm(onA, authId, [
        text(user.email),
        text(user.username),
        bytes(user.password),
      ]);
      await stream;
      expect(
        streamed.map((s) => (s.step.case === "session" ? "session" : s.step.value?.title)),
      ).toEqual(["initial", "login", "initial", "register", "session"]);
      expect(streamed.at(-1)).toEqual(done.step);
      const token = done.step?.step.case === "session" ? done.step.step.value.sessionToken : "";
      await onB.checkLoggedIn({}, { headers: { authorization: token } });
    }
    expect(await a.stop()).toBe(0);
    expect(await b.stop()).toBe(0);
  });
});

describe.skipIf(postgresBackend === undefined)("two homeservers as processes", () => {
  const databases: TestDatabase[] = [];
  afterAll(async () => {
    for (const d of databases) await d.close();
  });

  it("federate a user from A to B, and rotate A's key with the CLI while A runs", async () => {
    const backend = postgresBackend as NonNullable<typeof postgresBackend>;
    const [dbA, dbB] = await Promise.all([backend.open(), backend.open()]);
    databases.push(dbA, dbB);
    // Each SERVER_ID names its port, so the port is chosen before the process listens.
    const homeserver = (env: Record<string, string>) =>
      onFreePort(async (port) => {
        const full: Record<string, string> = {
          ...env,
          PORT: String(port),
          SERVER_ID: `127.0.0.1:${port}`,
          FEDERATION_ALLOW_INSECURE: "true",
        };
        return { env: full, process: await start(full) };
      });
    const [{ env: envA, process: a }, { env: envB, process: b }] = await Promise.all([
      homeserver({
        DATABASE_URL: dbA.url ?? "",
        KEY_ENCRYPTION_KEY: Buffer.alloc(32, 7).toString("base64"),
      }),
      homeserver({ DATABASE_URL: dbB.url ?? "" }),
    ]);
    const onA = clientFor(a);
    const onB = clientFor(b, "grpc/http2");
    const user = newUser();
    const authId = (await onA.beginAuth({})).authId;
    await onA.nextStep({ authId });
    await choose(onA, authId, "register");
    const done = await submitForm(onA, authId, [
      text(user.email),
      text(user.username),
      bytes(user.password),
    ]);
    const token = done.step?.step.case === "session" ? done.step.step.value.sessionToken : "";
    const { token: federated } = await onA.federate(
      { serverId: envB.SERVER_ID ?? "" },
      { headers: { authorization: token } },
    );
    const { session } = await onB.loginFederated({
      authToken: federated,
      serverId: envA.SERVER_ID ?? "",
    });
    await onB.checkLoggedIn({}, { headers: { authorization: session?.sessionToken ?? "" } });

    // The key is encrypted at rest under KEY_ENCRYPTION_KEY.
    const stored = await dbA.db.query<{ encrypted: boolean; private_key: Uint8Array }>(
      "SELECT encrypted, private_key FROM server_keys",
    );
    expect(stored.rows.map((r) => [r.encrypted, r.private_key.length])).toEqual([[true, 60]]);

    // The CLI rotates through A's admin API (its internal port): A serves the new key at once.
    const before = (await onA.key({})).key;
    const rotated = await runCli(["key", "rotate", "--server", a.internalUrl], {
      DATABASE_URL: envA.DATABASE_URL ?? "",
      KEY_ENCRYPTION_KEY: envA.KEY_ENCRYPTION_KEY ?? "",
    });
    expect(rotated.code).toBe(0);
    expect(rotated.stderr).toContain(`cadenza admin API at ${a.internalUrl}`);
    const announced = Buffer.from(/key \d+: (\S+)/.exec(rotated.stdout)?.[1] ?? "", "base64");
    expect(announced).toHaveLength(32);
    expect(announced).not.toEqual(Buffer.from(before));
    expect(Buffer.from((await onA.key({})).key)).toEqual(announced);

    // A wrong KEY_ENCRYPTION_KEY stops start-up with a clear message.
    await expect(
      start({ ...envA, PORT: "0", KEY_ENCRYPTION_KEY: Buffer.alloc(32, 8).toString("base64") }),
    ).rejects.toThrow(/exited with 2[\s\S]*KEY_ENCRYPTION_KEY does not decrypt/);
    expect(await a.stop()).toBe(0);
    expect(await b.stop()).toBe(0);
  });
});

describe.skipIf(postgresBackend === undefined)(
  "limits shared by two processes on one Postgres",
  () => {
    let database: TestDatabase;
    afterAll(async () => {
      await database?.close();
    });

    it("enforces one BeginAuth rate and one login schedule across both", async () => {
      database = await (postgresBackend as NonNullable<typeof postgresBackend>).open();
      const env = {
        DATABASE_URL: database.url ?? "",
        LIMIT_BEGIN_AUTH: "6/1m",
        LOGIN_FAILURES_BEFORE_DELAY: "4",
        LOGIN_FIRST_DELAY: "1h",
        ARGON2_MEMORY_KIB: "64",
        ARGON2_ITERATIONS: "1",
      };
      const [a, b] = await Promise.all([start(env), start(env)]);
      const onA = clientFor(a);
      const onB = clientFor(b);
      // Three flows on each: the budget of six is spent between them.
      const ids: string[] = [];
      for (const c of [onA, onB, onA, onB, onA, onB]) ids.push((await c.beginAuth({})).authId);
      for (const c of [onA, onB]) {
        await expect(c.beginAuth({})).rejects.toMatchObject({ code: Code.ResourceExhausted });
      }
      // Four failed logins, two on each: the fifth attempt waits, on either process.
      const guess = async (c: typeof onA, authId: string) => {
        await c.nextStep({ authId });
        await choose(c, authId, "login");
        return submitForm(c, authId, [text("victim@example.org"), bytes("not the password")]);
      };
      for (const [i, c] of [onA, onB, onA, onB].entries()) {
        await expect(guess(c, ids[i] ?? "")).rejects.toMatchObject({ code: Code.Unauthenticated });
      }
      await expect(guess(onB, ids[4] ?? "")).rejects.toMatchObject({
        code: Code.ResourceExhausted,
      });
      await expect(guess(onA, ids[5] ?? "")).rejects.toMatchObject({
        code: Code.ResourceExhausted,
      });
      expect(await a.stop()).toBe(0);
      expect(await b.stop()).toBe(0);
    });
  },
);
