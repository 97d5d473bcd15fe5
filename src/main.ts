import { createAppContext, createLogger } from "./app-context.js";
import { type Config, loadConfig } from "./config.js";
import { type RunningServer, startServer } from "./server/listener.js";
import { listenFailure, preflight, startupWarnings } from "./startup-checks.js";
import { startupFailureReport } from "./startup-failure.js";

/**
 * Starts cadenza from the environment and stops it cleanly on SIGTERM or
 * SIGINT. Everything that can be checked is checked before the database is
 * migrated or a key generated (src/startup-checks.ts); `loaded` receives the
 * configuration as soon as it is read, for the failure report.
 */
async function main(loaded: { config?: Config }): Promise<void> {
  const config = loadConfig();
  loaded.config = config;
  const logger = createLogger(config);
  for (const warning of startupWarnings(config)) logger.warn(warning);
  await preflight(config);
  const ctx = await createAppContext(config, { logger });
  let server: RunningServer;
  try {
    server = await startServer(ctx);
  } catch (err) {
    await ctx.close().catch(() => {});
    // A port taken between the check and now.
    throw listenFailure(config, err) ?? err;
  }

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

const loaded: { config?: Config } = {};
main(loaded).catch((err: unknown) => {
  const report = startupFailureReport(err, "cadenza: cannot start: ", loaded.config);
  process.stderr.write(report.text);
  process.exit(report.exitCode);
});
