import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { cliInProcess } from "./helpers/cli.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import { login, newUser, register, type TestUser } from "./helpers/flow.js";

/**
 * The operator's CLI, every admin command, against a running server over its
 * internal port (real HTTP on loopback, the INTERNAL_TOKEN rule on): the
 * commands run in this process through `runCli`, the function `src/cli.ts`
 * runs (test/processes.test.ts runs the executable itself).
 */

const TOKEN = "cli-test-internal-token-0123456789abcdef";

describe.each(backends)("the CLI against a running server on $name", (backend) => {
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  const auth = () =>
    createClient(AuthService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));

  /** Runs a command as an operator would, with the server's INTERNAL_TOKEN. */
  const cli = (args: readonly string[], env: Record<string, string> = {}) =>
    cliInProcess([...args, "--server", server.internalUrl], { INTERNAL_TOKEN: TOKEN, ...env });
  /** Runs a command with --json; it must succeed. */
  async function json(args: readonly string[]): Promise<unknown> {
    const r = await cli([...args, "--json"]);
    expect(r, r.stderr).toMatchObject({ code: 0 });
    return JSON.parse(r.stdout);
  }

  beforeAll(async () => {
    database = await backend.open();
    ctx = await createAppContext(testConfig({ INTERNAL_TOKEN: TOKEN, REGISTRATION: "open" }), {
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

  it("says which server it talks to, and lists, searches and shows users", async () => {
    const tag = `cli${Date.now().toString(36)}`;
    const made: (TestUser & { userId: bigint })[] = [];
    for (let i = 0; i < 3; i++) {
      const u = { ...newUser(), username: `${tag}${i}` };
      made.push({ ...u, ...(await register(auth(), u)) });
    }
    const [first] = made;
    if (!first) throw new Error("no user");

    const listed = await cli(["users", "list", tag, "--page-size", "2"]);
    expect(listed.code).toBe(0);
    expect(listed.stderr).toBe(`cadenza admin API at ${server.internalUrl}\n`);
    const lines = listed.stdout.trim().split("\n");
    expect(lines.map((l) => l.split(/\s+/)[1]).sort()).toEqual(made.map((m) => m.username).sort());
    expect(lines.every((l) => l.includes("enabled") && l.includes("sessions:1"))).toBe(true);

    const users = (await json(["users", "list", tag])) as { userId: string; username: string }[];
    expect(users.map((u) => u.userId).sort()).toEqual(made.map((m) => m.userId.toString()).sort());

    const byName = await cli(["users", "show", first.username]);
    const byId = await cli(["users", "show", first.userId.toString()]);
    expect(byName.stdout).toBe(byId.stdout);
    expect(byId.stdout).toContain(`user ${first.userId}\n`);
    expect(byId.stdout).toContain(`email       ${first.email}\n`);
    expect(byId.stdout).toContain("homeserver  (local)\n");

    expect(await cli(["users", "list", `${tag}-none`])).toMatchObject({
      code: 0,
      stdout: "(no users)\n",
    });
  });

  it("disables and enables a user, renames one and refuses a taken name", async () => {
    const user = newUser();
    const other = newUser();
    const { userId } = await register(auth(), user);
    await register(auth(), other);

    const disabled = await cli(["users", "disable", user.username]);
    expect(disabled.code).toBe(0);
    expect(disabled.stdout).toMatch(/disabled {4}\d{4}-/);
    await expectRpcError(
      login(auth(), user.email, user.password),
      Code.PermissionDenied,
      "h.user-disabled",
    );
    expect((await cli(["users", "enable", userId.toString()])).stdout).toContain("disabled    no");
    await login(auth(), user.email, user.password);

    const renamed = `${user.username.slice(0, 24)}-new`;
    const r = (await json(["users", "rename", userId.toString(), renamed])) as { username: string };
    expect(r.username).toBe(renamed);
    const taken = await cli(["users", "rename", renamed, other.username]);
    expect(taken.code).toBe(1);
    expect(taken.stdout).toBe("");
    expect(taken.stderr).toMatch(/\ncadenza: h\.[a-z-]+: .*taken/);
  });

  it("lists a user's sessions and revokes one, then the rest", async () => {
    const user = newUser();
    const { sessionToken } = await register(auth(), user);
    await login(auth(), user.email, user.password);
    await login(auth(), user.email, user.password);
    const sessions = (await json(["sessions", "list", user.username])) as { sessionId: string }[];
    expect(sessions).toHaveLength(3);
    const text = await cli(["sessions", "list", user.username]);
    expect(
      text.stdout
        .trim()
        .split("\n")
        .map((l) => l.split(" ")[0]),
    ).toEqual(sessions.map((s) => s.sessionId));

    const [one] = sessions;
    const revoked = await cli(["sessions", "revoke", user.username, one?.sessionId ?? ""]);
    expect(revoked).toMatchObject({ code: 0, stdout: "ended 1 session(s)\n" });
    expect(await json(["sessions", "list", user.username])).toHaveLength(2);
    expect((await cli(["sessions", "revoke", user.username])).stdout).toBe("ended 2 session(s)\n");
    expect((await cli(["sessions", "list", user.username])).stdout).toBe("(no sessions)\n");
    await expectRpcError(
      auth().checkLoggedIn({}, { headers: { authorization: sessionToken } }),
      Code.Unauthenticated,
      "h.blank-session",
    );
  });

  it("creates, lists and revokes invites, showing the code only at creation", async () => {
    const created = (await json([
      "invites",
      "create",
      "--uses",
      "2",
      "--valid",
      "1d",
      "--note",
      "for the CLI test",
    ])) as { code: string; invite: { inviteId: string; maxUses: number; expiresAt: string } };
    expect(created.code).toMatch(/\S{12,}/);
    expect(created.invite.maxUses).toBe(2);
    const expires = Date.parse(created.invite.expiresAt) - Date.now();
    expect(Math.abs(expires - 86_400_000)).toBeLessThan(600_000);

    const listed = await cli(["invites", "list"]);
    expect(listed.stdout).toContain(`${created.invite.inviteId}  uses 0/2`);
    expect(listed.stdout).toContain("for the CLI test");
    expect(listed.stdout).not.toContain(created.code);

    const revoked = await cli(["invites", "revoke", created.invite.inviteId]);
    expect(revoked.stdout).toContain("revoked");
    expect((await cli(["invites", "list"])).stdout).not.toContain(created.invite.inviteId);
    expect((await cli(["invites", "list", "--all"])).stdout).toContain(
      `${created.invite.inviteId}  uses 0/2`,
    );
    const bad = await cli(["invites", "create", "--valid", "soon"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--valid soon: expected a duration such as 7d or 12h");
  });

  it("shows the key and rotates it: Key serves the new one at once", async () => {
    const shown = (await json(["key", "show"])) as { keyId: string; publicKey: string };
    const rotated = await cli(["key", "rotate"]);
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toMatch(/^new current key \S+: \S+ \(created /);
    const after = (await json(["key", "show"])) as { keyId: string; publicKey: string };
    expect(after.keyId).not.toBe(shown.keyId);
    const { key } = await auth().key({});
    expect(Buffer.from(key).toString("base64")).toBe(after.publicKey);
  });

  it("deletes a user; showing them then fails with the server's message", async () => {
    const user = newUser();
    const { userId } = await register(auth(), user);
    expect(await cli(["users", "delete", user.username])).toMatchObject({
      code: 0,
      stdout: `deleted user ${userId}\n`,
    });
    const gone = await cli(["users", "show", userId.toString()]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/\ncadenza: h\.unknown-user: /);
  });

  it("fails plainly: a wrong token (1), no server there (1), a bad command (2)", async () => {
    const wrong = await cli(["users", "list"], {
      INTERNAL_TOKEN: "not-the-token-but-as-long-as-one-0123456789",
    });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/\ncadenza: h\.bad-internal-token: .*INTERNAL_TOKEN/);

    const none = await cliInProcess(["key", "show", "--server", "http://127.0.0.1:9"]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("cannot reach the admin API");
    expect(none.stderr).toContain("INTERNAL_HOST and INTERNAL_PORT");

    const usage = await cli(["users", "frobnicate"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^cadenza: unknown command: users frobnicate\n\nusage: /m);
    expect((await cli(["users", "show"])).stderr).toContain(
      "users show needs a user ID or username",
    );
  });
});
