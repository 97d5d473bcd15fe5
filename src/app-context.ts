import { type Logger, pino } from "pino";
import { loadCommonPasswords } from "./auth/account-rules.js";
import { type Accounts, createAccounts } from "./auth/accounts.js";
import type { FlowPolicy } from "./auth/flow-machine.js";
import { createFlows, type Flows } from "./auth/flows.js";
import { createArgon2Hasher, type PasswordHasher } from "./auth/password-hasher.js";
import { createSessions, type Sessions } from "./auth/sessions.js";
import { createStepHub, type StepHub } from "./auth/step-hub.js";
import { type Clock, systemClock } from "./clock.js";
import type { Config } from "./config.js";
import type { Database } from "./db/database.js";
import {
  createForeignUserStore,
  createRemoteKeyStore,
  createServerKeyStore,
  createUsedTokenStore,
} from "./db/federation-stores.js";
import { createFlowStore } from "./db/flow-store.js";
import { loadMigrations, migrate } from "./db/migrate.js";
import { createSessionStore } from "./db/session-store.js";
import { createUserStore } from "./db/user-store.js";
import { createFederation, type Federation } from "./federation/federation.js";
import { createRemoteKeys } from "./federation/remote-keys.js";
import { createServerKeys, type ServerKeys } from "./federation/server-keys.js";

/** Everything the server is made of, built once by {@link createAppContext}. */
export interface AppContext {
  readonly config: Config;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly db: Database;
  readonly hasher: PasswordHasher;
  readonly sessions: Sessions;
  readonly accounts: Accounts;
  readonly flows: Flows;
  readonly hub: StepHub;
  readonly serverKeys: ServerKeys;
  readonly federation: Federation;
  /** The schema version this build migrates to; /readyz compares against it. */
  readonly schemaVersion: number;
  /** Stops background work and closes the database. */
  close(): Promise<void>;
}

/** What tests (and tools) may supply instead of the real thing. */
export interface AppOverrides {
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly hasher?: PasswordHasher;
  /** An open database; the context then does not close it. */
  readonly db?: Database;
  readonly commonPasswords?: ReadonlySet<string>;
  /** Skip the periodic deletion of expired rows (tests sweep by hand). */
  readonly sweepIntervalMs?: number | false;
}

/** How often expired flows and sessions are deleted. */
const SWEEP_INTERVAL_MS = 10 * 60_000;

/** The logger cadenza uses everywhere: JSON lines on stdout, secrets redacted. */
export function createLogger(config: Pick<Config, "logLevel">): Logger {
  return pino({
    level: config.logLevel,
    redact: {
      paths: [
        "req.headers.authorization",
        "req.headers.cookie",
        'req.headers["sec-websocket-protocol"]',
      ],
      censor: "[redacted]",
    },
  });
}

/** Opens the configured database: Postgres when DATABASE_URL is set, else PGlite. */
export async function openDatabase(
  config: Pick<Config, "databaseUrl" | "databasePoolSize" | "dataDir">,
  logger: Logger,
): Promise<Database> {
  // Only the driver in use is loaded: start-up time is measured (BENCHMARKS.md, row 7).
  if (config.databaseUrl !== undefined) {
    const { createPostgresDatabase } = await import("./db/postgres.js");
    return createPostgresDatabase({
      connectionString: config.databaseUrl,
      poolSize: config.databasePoolSize,
      statementTimeoutMs: 30_000,
      onError: (err, what) => logger.error({ err }, `${what} failed`),
    });
  }
  const { createPgliteDatabase } = await import("./db/pglite.js");
  return createPgliteDatabase(config.dataDir);
}

/**
 * Builds the application: opens and migrates the database, then wires every
 * service to exactly the dependencies it uses.
 */
export async function createAppContext(
  config: Config,
  overrides: AppOverrides = {},
): Promise<AppContext> {
  const logger = overrides.logger ?? createLogger(config);
  const clock = overrides.clock ?? systemClock;
  const ownsDb = overrides.db === undefined;
  const db = overrides.db ?? (await openDatabase(config, logger));
  try {
    const migrations = await loadMigrations();
    const applied = await migrate(db, migrations);
    if (applied.length > 0) logger.info({ applied }, "database migrated");

    const hasher = overrides.hasher ?? createArgon2Hasher(config.argon2);
    const flowStore = createFlowStore(db);
    const sessions = await createSessions({
      db,
      clock,
      config,
      sessionStore: createSessionStore(db),
    });
    const accounts = await createAccounts({
      db,
      clock,
      hasher,
      commonPasswords: overrides.commonPasswords ?? loadCommonPasswords(),
      userStore: createUserStore(),
    });
    const policy: FlowPolicy = { registration: config.registration === "open", otherOptions: [] };
    const hub = await createStepHub(flowStore);
    const flows = createFlows({ db, clock, config, policy, flowStore, hub, accounts, sessions });
    const serverKeys = await createServerKeys({
      db,
      clock,
      logger,
      keyStore: createServerKeyStore(db),
      keyEncryptionKey: config.federation.keyEncryptionKey,
    });
    const federation = createFederation({
      db,
      clock,
      config,
      serverKeys,
      remoteKeys: createRemoteKeys({
        db,
        clock,
        config: config.federation,
        remoteKeyStore: createRemoteKeyStore(),
      }),
      sessions,
      usedTokens: createUsedTokenStore(),
      foreignUsers: createForeignUserStore(),
    });

    const sweepEvery = overrides.sweepIntervalMs ?? SWEEP_INTERVAL_MS;
    const sweeper =
      sweepEvery === false
        ? undefined
        : setInterval(() => {
            Promise.all([flows.sweep(), sessions.sweep()]).then(
              ([flowCount, sessionCount]) => {
                if (flowCount + sessionCount > 0) {
                  logger.debug(
                    { flows: flowCount, sessions: sessionCount },
                    "expired rows deleted",
                  );
                }
              },
              (err: unknown) => logger.warn({ err }, "deleting expired rows failed"),
            );
          }, sweepEvery).unref();

    return {
      config,
      logger,
      clock,
      db,
      hasher,
      sessions,
      accounts,
      flows,
      hub,
      serverKeys,
      federation,
      schemaVersion: migrations.at(-1)?.version ?? 0,
      async close() {
        if (sweeper) clearInterval(sweeper);
        await hub.close();
        await serverKeys.close();
        await sessions.close();
        if (ownsDb) await db.close();
      },
    };
  } catch (err) {
    if (ownsDb) await db.close().catch(() => {});
    throw err;
  }
}
