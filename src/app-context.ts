import { type Logger, pino } from "pino";
import { type Audit, createAudit } from "./audit.js";
import { type AccountAdmin, createAccountAdmin } from "./auth/account-admin.js";
import { loadCommonPasswords } from "./auth/account-rules.js";
import { type Accounts, createAccounts } from "./auth/accounts.js";
import { createEmailCodes } from "./auth/email-codes.js";
import type { FlowPolicy } from "./auth/flow-machine.js";
import { createFlows, type Flows } from "./auth/flows.js";
import { createInvites, type Invites } from "./auth/invites.js";
import { createPasskeys, type Passkeys } from "./auth/passkeys.js";
import { createArgon2Hasher, type PasswordHasher } from "./auth/password-hasher.js";
import { createSecondFactor, type SecondFactor } from "./auth/second-factor.js";
import { createSessions, type Sessions } from "./auth/sessions.js";
import { createStepHub, type StepHub } from "./auth/step-hub.js";
import { createSubmissions } from "./auth/submissions.js";
import { type Clock, systemClock } from "./clock.js";
import type { Config } from "./config.js";
import type { Database } from "./db/database.js";
import { loadMigrations, migrate } from "./db/migrate.js";
import { createStores, type Stores } from "./db/stores.js";
import { createMailer } from "./email/mailer.js";
import { type AccountEvents, createAccountEvents } from "./events/account-events.js";
import { createFederation, type Federation } from "./federation/federation.js";
import { createRemoteKeys } from "./federation/remote-keys.js";
import { type ResolveHost, systemResolveHost } from "./federation/server-ids.js";
import { createServerKeys, type ServerKeys } from "./federation/server-keys.js";
import { createUserDirectory, type UserDirectory } from "./homeserver/user-directory.js";
import { createLifecycle, type Lifecycle } from "./lifecycle.js";
import { gatedHasher } from "./limits/admission.js";
import { createLimits, type Limits } from "./limits/limits.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { loadWebUi, type WebUi } from "./server/web-ui.js";
import { loadServerSecret } from "./server-secrets.js";

/** Everything the server is made of, built once by {@link createAppContext}. */
export interface AppContext {
  readonly config: Config;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly db: Database;
  readonly stores: Stores;
  readonly hasher: PasswordHasher;
  readonly sessions: Sessions;
  readonly accounts: Accounts;
  readonly flows: Flows;
  readonly hub: StepHub;
  readonly serverKeys: ServerKeys;
  readonly federation: Federation;
  readonly events: AccountEvents;
  readonly directory: UserDirectory;
  readonly limits: Limits;
  readonly audit: Audit;
  readonly accountAdmin: AccountAdmin;
  readonly invites: Invites;
  readonly secondFactor: SecondFactor;
  readonly passkeys: Passkeys;
  readonly metrics: Metrics;
  /** The built web client, read at start-up; undefined with WEB_UI=off. */
  readonly webUi: WebUi | undefined;
  /** The schema version this build migrates to; /readyz compares against it. */
  readonly schemaVersion: number;
  /** Background jobs and closers; `lifecycle.runJobs()` runs every job now. */
  readonly lifecycle: Pick<Lifecycle, "jobs" | "runJobs">;
  /** Stops background work, closes everything opened, then the database. */
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
  /** A metrics registry (default: a new one with Node's process metrics). */
  readonly metrics?: Metrics;
  /** Whether background jobs run on their timers (default true; tests run them by hand). */
  readonly background?: boolean;
  /** Resolves homeservers' names for key fetches (default: the system resolver). */
  readonly resolveHost?: ResolveHost;
  /** Where the built web client is read from (default: dist/web). */
  readonly webUiDir?: string;
}

/** How often expired flows, sessions and used federation tokens are deleted. */
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

/**
 * Opens the configured database: Postgres when DATABASE_URL is set (LISTEN on
 * DATABASE_LISTEN_URL), else PGlite.
 */
export async function openDatabase(
  config: Pick<
    Config,
    | "databaseUrl"
    | "databaseListenUrl"
    | "databasePoolSize"
    | "databaseConnectTimeoutMs"
    | "databaseQueryTimeoutMs"
    | "dataDir"
  >,
  logger: Logger,
): Promise<Database> {
  // Only the driver in use is loaded: start-up time is measured (BENCHMARKS.md, row 7).
  if (config.databaseUrl !== undefined) {
    const { createPostgresDatabase } = await import("./db/postgres.js");
    return createPostgresDatabase({
      connectionString: config.databaseUrl,
      // The pool and NOTIFY (pg_notify in statements) use DATABASE_URL; only
      // LISTEN needs a session, which a pooler in transaction mode cannot give.
      listenConnectionString: config.databaseListenUrl,
      poolSize: config.databasePoolSize,
      connectTimeoutMs: config.databaseConnectTimeoutMs,
      queryTimeoutMs: config.databaseQueryTimeoutMs,
      logger,
    });
  }
  const { createPgliteDatabase } = await import("./db/pglite.js");
  return createPgliteDatabase(config.dataDir, { logger });
}

/**
 * Builds the application: opens and migrates the database, then wires every
 * service to exactly the dependencies it uses, registering each one's
 * background jobs and closer in one lifecycle.
 */
export async function createAppContext(
  config: Config,
  overrides: AppOverrides = {},
): Promise<AppContext> {
  const logger = overrides.logger ?? createLogger(config);
  const clock = overrides.clock ?? systemClock;
  const lifecycle = createLifecycle(logger);
  const db = overrides.db ?? (await openDatabase(config, logger));
  if (overrides.db === undefined) lifecycle.onClose("database", () => db.close());
  try {
    const migrations = await loadMigrations();
    const applied = await migrate(db, migrations);
    if (applied.length > 0) logger.info({ applied }, "database migrated");

    const stores = createStores();
    const metrics = overrides.metrics ?? createMetrics();
    const audit = createAudit(logger, metrics);
    const limits = createLimits({
      db,
      clock,
      config: config.limits,
      audit,
      loginStore: stores.loginThrottle,
    });
    lifecycle.job({ name: "limits.sweep", everyMs: SWEEP_INTERVAL_MS, run: limits.sweep });
    // Every argon2id hash and verification waits at the gate (ARGON2_MAX_*).
    const hasher = gatedHasher(
      overrides.hasher ?? createArgon2Hasher(config.argon2),
      limits.argon2,
    );
    const sessions = await createSessions({
      db,
      clock,
      config,
      sessionStore: stores.sessions,
    });
    lifecycle.onClose("sessions", () => sessions.close());
    lifecycle.job({ name: "sessions.sweep", everyMs: SWEEP_INTERVAL_MS, run: sessions.sweep });

    const accounts = await createAccounts({
      db,
      clock,
      hasher,
      commonPasswords: overrides.commonPasswords ?? loadCommonPasswords(),
      userStore: stores.users,
    });
    const events = await createAccountEvents({
      db,
      clock,
      store: stores.accountEvents,
      retentionMs: config.accountEventRetentionMs,
    });
    lifecycle.onClose("account events", () => events.close());
    lifecycle.job({ name: "events.sweep", everyMs: SWEEP_INTERVAL_MS, run: events.sweep });

    const mailer = createMailer({ config: config.email, homeserver: config.serverId, logger });
    if (mailer) lifecycle.onClose("mailer", async () => mailer.close());
    const policy: FlowPolicy = {
      registration: config.registration !== "closed",
      invites: config.registration === "invite",
      verifyEmail: config.email.verification,
      email: mailer !== undefined,
      passkeys: config.passkeys !== undefined,
    };
    const invites = createInvites({ db, clock, store: stores.invites, audit });
    const codes = createEmailCodes({
      db,
      clock,
      store: stores.emailCodes,
      secret: await loadServerSecret({
        db,
        clock,
        name: "email-code-hmac",
        keyEncryptionKey: config.federation.keyEncryptionKey,
      }),
      ttlMs: config.email.codeTtlMs,
    });
    lifecycle.job({ name: "codes.sweep", everyMs: SWEEP_INTERVAL_MS, run: codes.sweep });
    const secondFactorSecret = await loadServerSecret({
      db,
      clock,
      name: "second-factor",
      keyEncryptionKey: config.federation.keyEncryptionKey,
    });
    const secondFactor = createSecondFactor({
      db,
      clock,
      store: stores.secondFactor,
      secret: secondFactorSecret,
      issuer: config.totpIssuer,
      reauthWindowMs: config.reauthWindowMs,
      accounts,
      events,
      limits,
      audit,
    });
    const passkeys = createPasskeys({
      db,
      clock,
      store: stores.passkeys,
      config: config.passkeys,
      // Passkey user handles are derived from it under their own label (HKDF).
      secret: secondFactorSecret,
      accounts,
      events,
      limits,
      secondFactor,
      audit,
      logger,
    });
    lifecycle.job({ name: "passkeys.sweep", everyMs: SWEEP_INTERVAL_MS, run: passkeys.sweep });
    const submissions = createSubmissions({
      db,
      policy,
      accounts,
      sessions,
      events,
      limits,
      audit,
      invites,
      codes,
      mailer,
      accountStore: stores.accountAdmin,
      secondFactor,
      passkeys,
      logger,
    });
    const hub = await createStepHub({ db, flowStore: stores.flows });
    lifecycle.onClose("step hub", () => hub.close());
    const flows = createFlows({
      db,
      clock,
      config,
      policy,
      flowStore: stores.flows,
      hub,
      submissions,
      limits,
      audit,
    });
    lifecycle.job({ name: "flows.sweep", everyMs: SWEEP_INTERVAL_MS, run: flows.sweep });

    const serverKeys = await createServerKeys({
      db,
      clock,
      logger,
      keyStore: stores.serverKeys,
      keyEncryptionKey: config.federation.keyEncryptionKey,
    });
    lifecycle.onClose("server keys", () => serverKeys.close());
    const federation = createFederation({
      db,
      clock,
      config,
      serverKeys,
      remoteKeys: createRemoteKeys({
        db,
        clock,
        logger,
        config: config.federation,
        remoteKeyStore: stores.remoteKeys,
        metrics,
        resolveHost: overrides.resolveHost ?? systemResolveHost,
      }),
      sessions,
      usedTokens: stores.usedTokens,
      foreignUsers: stores.foreignUsers,
      events,
      limits,
      audit,
    });
    lifecycle.job({ name: "federation.sweep", everyMs: SWEEP_INTERVAL_MS, run: federation.sweep });

    const directory = createUserDirectory({ db, store: stores.directory });
    const accountAdmin = createAccountAdmin({
      db,
      clock,
      store: stores.accountAdmin,
      events,
      audit,
      sessions,
      secondFactorStore: stores.secondFactor,
      sessionIdleTtlMs: config.sessionIdleTtlMs,
    });

    metrics.observe({
      argon2InFlight: () => limits.argon2.inFlight,
      argon2Queued: () => limits.argon2.queued,
      liveFlows: () => flows.liveCount(),
      eventConsumers: () => events.consumers,
      pool: () => db.poolStats?.(),
    });

    const webUi = config.webUi ? await loadWebUi(overrides.webUiDir) : undefined;
    // Info, not warn: the default setting on an unbuilt checkout (npm run dev) is no fault,
    // and / itself answers what to do.
    if (webUi && webUi.files.size === 0) {
      logger.info(
        { dir: webUi.dir },
        "WEB_UI=on but the web client is not built: / answers 503 (run npm run build, or set WEB_UI=off)",
      );
    }

    if (overrides.background !== false) lifecycle.start();
    return {
      config,
      logger,
      clock,
      db,
      stores,
      hasher,
      sessions,
      accounts,
      flows,
      hub,
      serverKeys,
      federation,
      events,
      directory,
      limits,
      audit,
      accountAdmin,
      invites,
      secondFactor,
      passkeys,
      metrics,
      webUi,
      schemaVersion: migrations.at(-1)?.version ?? 0,
      lifecycle,
      close: () => lifecycle.close(),
    };
  } catch (err) {
    await lifecycle.close().catch(() => {});
    throw err;
  }
}
