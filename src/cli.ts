import { createLogger, openDatabase } from "./app-context.js";
import { ConfigError, loadConfig } from "./config.js";
import { migrate } from "./db/migrate.js";

const usage = `usage: npm run cli -- <command>

commands:
  migrate    apply pending database migrations and exit (also done at start-up)
`;

/** Operator commands: `npm run cli -- <command>`. */
async function main(argv: readonly string[]): Promise<number> {
  const [command] = argv;
  if (command === undefined || command === "help" || command === "--help") {
    process.stdout.write(usage);
    return command === undefined ? 2 : 0;
  }
  const config = loadConfig();
  const logger = createLogger(config);
  switch (command) {
    case "migrate": {
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
    default:
      process.stderr.write(`unknown command: ${command}\n${usage}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const message = err instanceof ConfigError || !(err instanceof Error) ? String(err) : err.stack;
    process.stderr.write(`cadenza: ${message}\n`);
    process.exit(1);
  },
);
