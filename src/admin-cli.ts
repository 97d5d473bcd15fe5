/**
 * The operator's commands (the CLI): each, but migrate and generating an
 * encryption key, a call to the admin API of the running server.
 * `src/cli.ts` is the executable that runs them.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { type JsonValue, toJson } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createLogger, openDatabase } from "./app-context.js";
import { type Config, loadConfig } from "./config.js";
import { migrate } from "./db/migrate.js";
import {
  AdminService,
  type Invite,
  InviteSchema,
  type Passkey,
  PasskeySchema,
  type ServerKey,
  ServerKeySchema,
  type Session,
  SessionSchema,
  type User,
  UserSchema,
} from "./gen/cadenza/admin/v1/admin_pb.js";
import { ErrorSchema } from "./gen/hrpc/v1/hrpc_pb.js";
import { parseDuration } from "./setting-parsers.js";
import { checkDatabase, lookalikeWarnings, throwProblems } from "./startup-checks.js";
import { startupFailureReport } from "./startup-failure.js";

const usage = `usage: npm run cli -- <command> [arguments] [--json] [--server URL]
       (in the image: node dist/cli.js <command> …)

Every command but migrate and key generate-encryption-key talks to the admin
API of the running server, on its internal port (INTERNAL_HOST:INTERNAL_PORT,
with INTERNAL_TOKEN), so it works the same on PGlite and Postgres and never
opens a data directory behind a server's back.

users:
  users list [QUERY] [--page-size N]   users whose username or email contains QUERY
  users show USER                      USER is a user ID or a username
  users disable USER | users enable USER
  users delete USER
  users rename USER NEW_USERNAME
second factor:
  totp disable USER                    turn USER's TOTP off and delete their recovery codes
                                       (for a user who lost both); they enrol again themselves
passkeys:
  passkeys list USER
  passkeys remove USER [PASSKEY_ID …]  without IDs, every passkey of USER (a lost device)
sessions:
  sessions list USER
  sessions revoke USER [SESSION_ID …]  without IDs, every session of USER
invites (REGISTRATION=invite):
  invites create [--uses N] [--valid 7d] [--note TEXT]
  invites list [--all]
  invites revoke INVITE_ID
server key:
  key show
  key rotate                           a new Ed25519 key, current on every replica at once
  key generate-encryption-key          print a fresh KEY_ENCRYPTION_KEY (touches nothing)
database:
  migrate                              apply pending migrations (needs no running server)

options:
  --json          print the answer as JSON, for scripts
  --server URL    the admin API to use (default: the internal port of this environment)
`;

type Admin = Client<typeof AdminService>;

/** Arguments split into words and options (`--name value`, `--flag`). */
function parseArgs(argv: readonly string[]): {
  words: string[];
  options: Map<string, string | true>;
} {
  const words: string[] = [];
  const options = new Map<string, string | true>();
  const flags = new Set(["--json", "--all"]);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (!arg.startsWith("--")) {
      words.push(arg);
    } else if (flags.has(arg)) {
      options.set(arg, true);
    } else {
      const value = argv[i + 1];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      options.set(arg, value);
      i++;
    }
  }
  return { words, options };
}

class UsageError extends Error {}

/** The internal port's URL, as this environment's server would listen on it. */
function internalUrl(config: Config): string {
  const host = ["0.0.0.0", "::", ""].includes(config.internal.host)
    ? "127.0.0.1"
    : config.internal.host;
  const bracketed = host.includes(":") ? `[${host}]` : host;
  return `${config.tls ? "https" : "http"}://${bracketed}:${config.internal.port}`;
}

function adminClient(baseUrl: string, config: Config): Admin {
  const bearer: Interceptor = (next) => (req) => {
    if (config.internal.token) req.header.set("authorization", `Bearer ${config.internal.token}`);
    return next(req);
  };
  // With TLS the server's own certificate is the one to trust.
  const ca = config.tls ? readFileSync(config.tls.certFile) : undefined;
  return createClient(
    AdminService,
    createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      interceptors: [bearer],
      ...(ca ? { nodeOptions: { ca } } : {}),
    }),
  );
}

const when = (t: { seconds: bigint; nanos: number } | undefined): string =>
  t ? timestampDate(t as Parameters<typeof timestampDate>[0]).toISOString() : "-";

const userLine = (u: User): string =>
  [
    u.userId.toString().padEnd(20),
    u.username.padEnd(24),
    (u.email || (u.homeserver ? `@${u.homeserver}` : "")).padEnd(32),
    u.disabledAt ? "disabled" : "enabled ",
    `sessions:${u.sessionCount}`,
  ].join(" ");

const userDetail = (u: User): string =>
  [
    `user ${u.userId}`,
    `  username    ${u.username}`,
    `  email       ${u.email || "-"}`,
    `  homeserver  ${u.homeserver || "(local)"}${u.foreignUserId ? ` (their ID ${u.foreignUserId})` : ""}`,
    `  created     ${when(u.createdAt)}`,
    `  disabled    ${u.disabledAt ? when(u.disabledAt) : "no"}`,
    `  totp        ${u.totpEnabled ? "on" : "off"}`,
    `  passkeys    ${u.passkeyCount}`,
    `  sessions    ${u.sessionCount}`,
  ].join("\n");

const sessionLine = (s: Session): string =>
  `${s.sessionId}  created ${when(s.createdAt)}  used ${when(s.lastUsedAt)}  from ${s.clientAddress || "-"}  ${s.userAgent}`;

const passkeyLine = (p: Passkey): string =>
  `${p.passkeyId}  ${p.name}  added ${when(p.createdAt)}  used ${when(p.lastUsedAt)}${p.backedUp ? "  synced" : ""}`;

const inviteLine = (i: Invite): string =>
  `${i.inviteId}  uses ${i.uses}/${i.maxUses}  expires ${when(i.expiresAt)}${i.revokedAt ? "  revoked" : ""}  ${i.note}`;

const keyLine = (k: ServerKey): string =>
  `key ${k.keyId}: ${Buffer.from(k.publicKey).toString("base64")} (created ${when(k.createdAt)}, ${k.encrypted ? "encrypted at rest" : "stored in clear: set KEY_ENCRYPTION_KEY"})`;

/** Runs an admin command; returns what to print as text and as JSON. */
async function runAdmin(
  admin: Admin,
  words: readonly string[],
  options: ReadonlyMap<string, string | true>,
): Promise<{ text: string; json: JsonValue }> {
  const [group, action, ...rest] = words;
  const need = (n: number, what: string): void => {
    if (rest.length < n) throw new UsageError(`${group} ${action} needs ${what}`);
  };
  const option = (name: string): string | undefined => {
    const v = options.get(name);
    return typeof v === "string" ? v : undefined;
  };
  /** A user ID (digits) or a username, as the admin API wants it. */
  const userId = async (ref: string): Promise<bigint> =>
    /^\d{1,20}$/.test(ref)
      ? BigInt(ref)
      : ((await admin.getUser({ user: { case: "username", value: ref } })).user?.userId ?? 0n);
  const users = (list: readonly User[]) => ({
    text: list.map(userLine).join("\n") || "(no users)",
    json: list.map((u) => toJson(UserSchema, u)),
  });
  const one = (u: User | undefined) => ({
    text: u ? userDetail(u) : "",
    json: u ? toJson(UserSchema, u) : null,
  });

  switch (`${group} ${action}`) {
    case "users list": {
      const pageSize = Number(option("--page-size") ?? 100);
      const all: User[] = [];
      let pageToken = "";
      do {
        const page = await admin.listUsers({ query: rest[0] ?? "", pageSize, pageToken });
        all.push(...page.users);
        pageToken = page.nextPageToken;
      } while (pageToken !== "");
      return users(all);
    }
    case "users show":
      need(1, "a user ID or username");
      return one(
        (await admin.getUser({ user: { case: "userId", value: await userId(rest[0] ?? "") } }))
          .user,
      );
    case "users disable":
      need(1, "a user ID or username");
      return one((await admin.disableUser({ userId: await userId(rest[0] ?? "") })).user);
    case "users enable":
      need(1, "a user ID or username");
      return one((await admin.enableUser({ userId: await userId(rest[0] ?? "") })).user);
    case "users delete": {
      need(1, "a user ID or username");
      const id = await userId(rest[0] ?? "");
      await admin.deleteUser({ userId: id });
      return { text: `deleted user ${id}`, json: { deleted: id.toString() } };
    }
    case "users rename":
      need(2, "a user ID or username and the new username");
      return one(
        (await admin.renameUser({ userId: await userId(rest[0] ?? ""), username: rest[1] ?? "" }))
          .user,
      );
    case "totp disable": {
      need(1, "a user ID or username");
      const { user } = await admin.disableTotp({ userId: await userId(rest[0] ?? "") });
      return {
        text: user ? `TOTP is off for user ${user.userId} (${user.username})` : "",
        json: user ? toJson(UserSchema, user) : null,
      };
    }
    case "passkeys list": {
      need(1, "a user ID or username");
      const { passkeys } = await admin.listPasskeys({ userId: await userId(rest[0] ?? "") });
      return {
        text: passkeys.map(passkeyLine).join("\n") || "(no passkeys)",
        json: passkeys.map((p) => toJson(PasskeySchema, p)),
      };
    }
    case "passkeys remove": {
      need(1, "a user ID or username");
      const { passkeyIds } = await admin.deletePasskeys({
        userId: await userId(rest[0] ?? ""),
        passkeyIds: rest.slice(1),
      });
      return { text: `removed ${passkeyIds.length} passkey(s)`, json: { passkeyIds } };
    }
    case "sessions list": {
      need(1, "a user ID or username");
      const { sessions } = await admin.listSessions({ userId: await userId(rest[0] ?? "") });
      return {
        text: sessions.map(sessionLine).join("\n") || "(no sessions)",
        json: sessions.map((s) => toJson(SessionSchema, s)),
      };
    }
    case "sessions revoke": {
      need(1, "a user ID or username");
      const { sessionIds } = await admin.revokeSessions({
        userId: await userId(rest[0] ?? ""),
        sessionIds: rest.slice(1),
      });
      return { text: `ended ${sessionIds.length} session(s)`, json: { sessionIds } };
    }
    case "invites create": {
      const valid = option("--valid");
      const validMs = valid === undefined ? undefined : parseDuration(valid);
      if (valid !== undefined && validMs === undefined) {
        throw new UsageError(`--valid ${valid}: expected a duration such as 7d or 12h`);
      }
      const { invite, code } = await admin.createInvite({
        maxUses: Number(option("--uses") ?? 1),
        validForSeconds: BigInt(Math.floor((validMs ?? 0) / 1000)),
        note: option("--note") ?? "",
      });
      return {
        text: `invite ${invite?.inviteId}: code ${code} (shown only now)\n${invite ? inviteLine(invite) : ""}`,
        json: { code, invite: invite ? toJson(InviteSchema, invite) : null },
      };
    }
    case "invites list": {
      const { invites } = await admin.listInvites({ includeInactive: options.has("--all") });
      return {
        text: invites.map(inviteLine).join("\n") || "(no invites)",
        json: invites.map((i) => toJson(InviteSchema, i)),
      };
    }
    case "invites revoke": {
      need(1, "an invite ID");
      const { invite } = await admin.revokeInvite({ inviteId: rest[0] ?? "" });
      return {
        text: invite ? inviteLine(invite) : "",
        json: invite ? toJson(InviteSchema, invite) : null,
      };
    }
    case "key show":
    case "key rotate": {
      const { key } =
        action === "rotate" ? await admin.rotateServerKey({}) : await admin.getServerKey({});
      return {
        text: key ? `${action === "rotate" ? "new current " : "current "}${keyLine(key)}` : "",
        json: key ? toJson(ServerKeySchema, key) : null,
      };
    }
    default:
      throw new UsageError(`unknown command: ${words.join(" ")}`);
  }
}

/** Where a command's output goes, and the environment it reads its settings from. */
export interface CliIo {
  readonly env: NodeJS.ProcessEnv;
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

const processIo: CliIo = {
  env: process.env,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/**
 * Runs one operator command (`npm run cli -- <command>`) with the server's
 * environment and returns its exit code: 0 done, 1 the server (or the
 * database) refused or could not be reached, 2 a usage or configuration error.
 */
export async function runCli(argv: readonly string[], io: CliIo = processIo): Promise<number> {
  const loaded: { config?: Config } = {};
  try {
    return await runCommand(argv, io, loaded);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`cadenza: ${err.message}\n\n${usage}`);
      return 2;
    }
    if (err instanceof ConnectError) {
      // The server's own answer: its identifier and message.
      const identifier = err.findDetails(ErrorSchema)[0]?.identifier;
      const unreachable = err.code === Code.Unavailable && identifier === undefined;
      io.stderr(
        unreachable
          ? `cadenza: cannot reach the admin API (${err.rawMessage}): is the server running, and are INTERNAL_HOST and INTERNAL_PORT those it listens on? (or pass --server URL)\n`
          : `cadenza: ${identifier ? `${identifier}: ` : ""}${err.rawMessage}\n`,
      );
      return 1;
    }
    const report = startupFailureReport(
      err,
      `cadenza: cannot run ${argv.join(" ")}: `,
      loaded.config,
    );
    io.stderr(report.text);
    return report.exitCode;
  }
}

async function runCommand(
  argv: readonly string[],
  io: CliIo,
  loaded: { config?: Config },
): Promise<number> {
  if (argv.length === 0 || argv[0] === "help" || argv[0] === "--help") {
    io.stdout(usage);
    return argv.length === 0 ? 2 : 0;
  }
  const { words, options } = parseArgs(argv);
  const command = words.join(" ");
  if (command === "key generate-encryption-key") {
    io.stdout(`${randomBytes(32).toString("base64")}\n`);
    return 0;
  }
  const config = loadConfig(io.env);
  loaded.config = config;
  const logger = createLogger({ logLevel: config.logLevel === "info" ? "warn" : config.logLevel });
  for (const warning of lookalikeWarnings(config)) logger.warn(warning);
  if (command === "migrate") {
    // The server's own database checks first (on PGlite: no server holds DATA_DIR).
    throwProblems(await checkDatabase(config));
    const db = await openDatabase(config, logger);
    try {
      const applied = await migrate(db);
      io.stdout(
        applied.length === 0 ? "database is up to date\n" : `applied: ${applied.join(", ")}\n`,
      );
      return 0;
    } finally {
      await db.close();
    }
  }
  const server = (options.get("--server") as string | undefined) ?? internalUrl(config);
  io.stderr(`cadenza admin API at ${server}\n`);
  const out = await runAdmin(adminClient(server, config), words, options);
  io.stdout(options.has("--json") ? `${JSON.stringify(out.json, null, 2)}\n` : `${out.text}\n`);
  return 0;
}
