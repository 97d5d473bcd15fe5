import { randomBytes } from "node:crypto";
import { createAppContext, createLogger, openDatabase } from "./app-context.js";
import { type Config, loadConfig } from "./config.js";
import { migrate } from "./db/migrate.js";
import { checkDatabase, lookalikeWarnings, throwProblems } from "./startup-checks.js";
import { startupFailureReport } from "./startup-failure.js";

const usage = `usage: npm run cli -- <command>

commands:
  migrate       apply pending database migrations and exit (also done at start-up)
  key show      print this server's current public key (base64)
  key rotate    make a new Ed25519 key current; running servers on Postgres switch at once
                (on embedded PGlite, stop the server first: one process per DATA_DIR,
                which cadenza enforces)
  key generate-encryption-key
                print a fresh random KEY_ENCRYPTION_KEY (32 bytes, base64); touches nothing
`;

/**
 * Operator commands: `npm run cli -- <command>`, with the server's
 * environment. Commands that open the database first run the server's
 * database checks (src/startup-checks.ts), so they fail with the same one
 * line; on PGlite that includes a server holding DATA_DIR.
 */
async function main(command: string, loaded: { config?: Config }): Promise<number> {
  if (command === "" || command === "help" || command === "--help") {
    process.stdout.write(usage);
    return command === "" ? 2 : 0;
  }
  if (command === "key generate-encryption-key") {
    process.stdout.write(`${randomBytes(32).toString("base64")}\n`);
    return 0;
  }
  if (!["migrate", "key show", "key rotate"].includes(command)) {
    process.stderr.write(`unknown command: ${command}\n${usage}`);
    return 2;
  }
  const config = loadConfig();
  loaded.config = config;
  const logger = createLogger({ logLevel: config.logLevel === "info" ? "warn" : config.logLevel });
  for (const warning of lookalikeWarnings(config)) logger.warn(warning);
  throwProblems(await checkDatabase(config));
  if (command === "migrate") {
    const db = await openDatabase(config, logger);
    try {
      const applied = await migrate(db);
      process.stdout.write(
        applied.length === 0 ? "database is up to date\n" : `applied: ${applied.join(", ")}\n`,
      );
      return 0;
    } finally {
      await db.close();
    }
  }
  const ctx = await createAppContext(config, { logger, background: false });
  try {
    const key = command === "key rotate" ? await ctx.serverKeys.rotate() : ctx.serverKeys.current();
    if (command === "key rotate") ctx.audit.record("key.rotated", { keyId: key.id });
    process.stdout.write(
      `${command === "key rotate" ? "new current key" : "current key"} ${key.id}: ${Buffer.from(key.publicKey).toString("base64")}\n`,
    );
    return 0;
  } finally {
    await ctx.close();
  }
}

const command = process.argv.slice(2).join(" ");
const loaded: { config?: Config } = {};
main(command, loaded).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const report = startupFailureReport(err, `cadenza: cannot run ${command}: `, loaded.config);
    process.stderr.write(report.text);
    process.exit(report.exitCode);
  },
);
