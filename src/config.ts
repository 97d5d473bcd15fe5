/**
 * cadenza's configuration: the settings declared in src/settings.ts, read from
 * the environment once and shaped into a frozen, typed object. This is the
 * only module that reads `process.env`.
 */

import { SettingProblem } from "./setting-parsers.js";
import {
  type logLevels,
  type Setting,
  type SettingName,
  type SettingValues,
  settings,
} from "./settings.js";

export { parseDuration } from "./setting-parsers.js";
export { logLevels } from "./settings.js";

export type LogLevel = (typeof logLevels)[number];

/** argon2id cost parameters (OWASP's recommendation is m=19456 KiB, t=2, p=1). */
export interface Argon2Params {
  readonly memoryKib: number;
  readonly iterations: number;
  readonly parallelism: number;
}

export interface Config {
  readonly host: string;
  readonly port: number;
  /** This homeserver's ID, `domain:port`. */
  readonly serverId: string;
  readonly logLevel: LogLevel;
  /** Postgres connection string; undefined selects embedded PGlite in `dataDir`. */
  readonly databaseUrl: string | undefined;
  readonly databasePoolSize: number;
  /** PGlite's data directory, or `memory://` for a database that lives only in memory. */
  readonly dataDir: string;
  readonly tls: { readonly certFile: string; readonly keyFile: string } | undefined;
  /** Exact origins allowed by CORS; `["*"]` allows any origin. */
  readonly corsOrigins: readonly string[];
  readonly flowTtlMs: number;
  readonly sessionIdleTtlMs: number;
  readonly sessionMaxTtlMs: number;
  readonly registration: "open" | "closed";
  readonly argon2: Argon2Params;
  /** Largest request message accepted, in bytes. */
  readonly readMaxBytes: number;
  /** How long a shutdown waits for calls in flight before it cuts them off. */
  readonly shutdownGraceMs: number;
  /** How long an hRPC WebSocket may take to send its request. */
  readonly hrpcStreamRequestTimeoutMs: number;
  /** Connection limits and timeouts: see {@link ConnectionConfig}. */
  readonly connections: ConnectionConfig;
  readonly federation: FederationConfig;
}

export interface FederationConfig {
  readonly enabled: boolean;
  /** Server IDs (canonical `host:port`) allowed to federate; empty allows all not denied. */
  readonly allow: readonly string[];
  /** Server IDs (canonical `host:port`) never federated with. */
  readonly deny: readonly string[];
  /** Allow plain http and loopback/private targets (development and tests only). */
  readonly allowInsecure: boolean;
  /** How long a homeserver's fetched public key is trusted before it is fetched again. */
  readonly keyTtlMs: number;
  /** How long after `issued_at` a federation token is accepted. */
  readonly tokenTtlMs: number;
  /** Accept tokens without `issued_at`, as other Harmony servers issue them. */
  readonly acceptUntimed: boolean;
  /** Timeout for calls to other homeservers. */
  readonly requestTimeoutMs: number;
  /** 32-byte key (AES-256-GCM) the server's private key is encrypted with at rest. */
  readonly keyEncryptionKey: Buffer | undefined;
}

/** How long connections may take and how many may be open (src/server/connections.ts). */
export interface ConnectionConfig {
  /** Time from accept to the first request's headers (TLS handshake included), and for each later HTTP/1.1 request's headers. */
  readonly requestDeadlineMs: number;
  /** Time a request has to arrive whole, body included. */
  readonly requestTimeoutMs: number;
  /** An HTTP/1.1 keep-alive connection, or an HTTP/2 one with no open stream, is closed after this long. */
  readonly idleTimeoutMs: number;
  /** Open connections at most. */
  readonly maxConnections: number;
  /** Open connections at most from one client address (an IPv6 /64); 0 for no limit. */
  readonly maxConnectionsPerAddress: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS for every HTTP/2 connection. */
  readonly http2MaxConcurrentStreams: number;
}

/** Thrown by {@link loadConfig} with every problem found, one per line. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Rules that involve more than one setting: each returns a problem naming the
 * variables to change, or undefined.
 */
const crossChecks: readonly ((v: SettingValues) => string | undefined)[] = [
  (v) =>
    (v.TLS_CERT === "") !== (v.TLS_KEY === "")
      ? "TLS_CERT and TLS_KEY: set both (PEM file paths) to serve TLS, or neither"
      : undefined,
  (v) =>
    v.SESSION_IDLE_TTL > v.SESSION_MAX_TTL
      ? "SESSION_IDLE_TTL: must not be longer than SESSION_MAX_TTL"
      : undefined,
  (v) =>
    v.ARGON2_MEMORY_KIB < 8 * v.ARGON2_PARALLELISM
      ? `ARGON2_MEMORY_KIB=${v.ARGON2_MEMORY_KIB}: must be at least 8 × ARGON2_PARALLELISM (${8 * v.ARGON2_PARALLELISM})`
      : undefined,
];

/**
 * Parses every setting from `env`. Returns the values with every problem found,
 * so an operator fixes them in one go; a bad value is replaced by its default
 * so the cross-checks can still run.
 */
function readSettings(env: Env): { values: SettingValues; problems: string[] } {
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(settings) as [SettingName, Setting<unknown>][]) {
    const given = env[name]?.trim() ?? "";
    try {
      values[name] = s.parse(given === "" ? s.default : given);
    } catch (err) {
      if (!(err instanceof SettingProblem)) throw err;
      problems.push(`${name}=${given}: ${err.message}`);
      values[name] = s.parse(s.default);
    }
  }
  const typed = values as SettingValues;
  for (const check of crossChecks) {
    const problem = check(typed);
    if (problem !== undefined) problems.push(problem);
  }
  return { values: typed, problems };
}

/** The typed configuration object, shaped from the parsed settings. */
function shape(v: SettingValues): Config {
  return Object.freeze({
    host: v.HOST,
    port: v.PORT,
    // PORT=0 (any free port) leaves the derived default `localhost:0`, fine for
    // tests that do not federate.
    serverId: v.SERVER_ID ?? `localhost:${v.PORT}`,
    logLevel: v.LOG_LEVEL,
    databaseUrl: v.DATABASE_URL,
    databasePoolSize: v.DATABASE_POOL_SIZE,
    dataDir: v.DATA_DIR,
    tls:
      v.TLS_CERT !== "" && v.TLS_KEY !== ""
        ? Object.freeze({ certFile: v.TLS_CERT, keyFile: v.TLS_KEY })
        : undefined,
    corsOrigins: v.CORS_ORIGINS,
    flowTtlMs: v.FLOW_TTL,
    sessionIdleTtlMs: v.SESSION_IDLE_TTL,
    sessionMaxTtlMs: v.SESSION_MAX_TTL,
    registration: v.REGISTRATION,
    argon2: Object.freeze({
      memoryKib: v.ARGON2_MEMORY_KIB,
      iterations: v.ARGON2_ITERATIONS,
      parallelism: v.ARGON2_PARALLELISM,
    }),
    readMaxBytes: v.READ_MAX_BYTES,
    shutdownGraceMs: v.SHUTDOWN_GRACE,
    hrpcStreamRequestTimeoutMs: v.HRPC_STREAM_REQUEST_TIMEOUT,
    connections: Object.freeze({
      requestDeadlineMs: v.REQUEST_DEADLINE,
      requestTimeoutMs: Math.max(v.REQUEST_TIMEOUT, v.REQUEST_DEADLINE),
      idleTimeoutMs: v.IDLE_TIMEOUT,
      maxConnections: v.MAX_CONNECTIONS,
      maxConnectionsPerAddress: v.MAX_CONNECTIONS_PER_ADDRESS,
      http2MaxConcurrentStreams: v.HTTP2_MAX_CONCURRENT_STREAMS,
    }),
    federation: Object.freeze({
      enabled: v.FEDERATION === "on",
      allow: v.FEDERATION_ALLOW,
      deny: v.FEDERATION_DENY,
      allowInsecure: v.FEDERATION_ALLOW_INSECURE,
      keyTtlMs: v.FEDERATION_KEY_TTL,
      tokenTtlMs: v.FEDERATION_TOKEN_TTL,
      acceptUntimed: v.FEDERATION_ACCEPT_UNTIMED,
      requestTimeoutMs: v.FEDERATION_TIMEOUT,
      keyEncryptionKey: v.KEY_ENCRYPTION_KEY,
    }),
  });
}

/**
 * Reads and validates the configuration. Throws a {@link ConfigError} naming
 * every bad variable at once.
 */
export function loadConfig(env: Env = process.env): Config {
  const { values, problems } = readSettings(env);
  if (problems.length > 0) throw new ConfigError(problems);
  return shape(values);
}
