import { createAppContext, createLogger } from "./app-context.js";
import { ConfigError, loadConfig } from "./config.js";
import { StartupError } from "./errors.js";
import { startServer } from "./server/listener.js";
import { startupWarnings } from "./startup-checks.js";

/** Starts cadenza from the environment and stops it cleanly on SIGTERM or SIGINT. */
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`cadenza: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config);
  for (const warning of startupWarnings(config)) logger.warn(warning);
  const ctx = await createAppContext(config, { logger });
  const server = await startServer(ctx);

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    server
      .close()
      .then(() => ctx.close())
      .then(
        () => {
          logger.info("stopped");
          process.exit(0);
        },
        (err: unknown) => {
          logger.error({ err }, "shutdown failed");
          process.exit(1);
        },
      );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err: unknown) => {
  if (err instanceof StartupError) {
    process.stderr.write(`cadenza: cannot start: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`cadenza: failed to start: ${err instanceof Error ? err.stack : err}\n`);
  process.exit(1);
});
