/**
 * cadenza's configuration: the settings declared in src/settings.ts, read from
 * the environment once and shaped into a frozen, typed object. This is the
 * only module that reads `process.env`.
 */

import { isIP } from "node:net";
import { isLoopbackHost } from "./net-address.js";
import { type Lookalike, settingLookalikes } from "./setting-lookalikes.js";
import { type Rate, SettingProblem } from "./setting-parsers.js";
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
  /** The internal listener, for the homeserver's own services. */
  readonly internal: {
    readonly host: string;
    readonly port: number;
    /** The bearer token internal calls need; undefined lets every call through (loopback only). */
    readonly token: string | undefined;
  };
  /** This homeserver's ID, `domain:port`. */
  readonly serverId: string;
  readonly logLevel: LogLevel;
  /** Postgres connection string; undefined selects embedded PGlite in `dataDir`. */
  readonly databaseUrl: string | undefined;
  /**
   * Where the LISTEN connections go: DATABASE_LISTEN_URL, else `databaseUrl`.
   * A different URL marks `databaseUrl` as a pooler (src/db/postgres.ts).
   */
  readonly databaseListenUrl: string | undefined;
  readonly databasePoolSize: number;
  /** How long opening a Postgres connection, or waiting for a pooled one, may take. */
  readonly databaseConnectTimeoutMs: number;
  /** How long a Postgres statement may take (server- and client-side). */
  readonly databaseQueryTimeoutMs: number;
  /** How long /readyz waits for the database. */
  readonly readyTimeoutMs: number;
  /** PGlite's data directory, or `memory://` for a database that lives only in memory. */
  readonly dataDir: string;
  readonly tls: { readonly certFile: string; readonly keyFile: string } | undefined;
  /** Exact origins allowed by CORS; `["*"]` allows any origin. */
  readonly corsOrigins: readonly string[];
  /** Whether the public port serves the reference web client at `/` (src/server/web-ui.ts). */
  readonly webUi: boolean;
  readonly flowTtlMs: number;
  readonly sessionIdleTtlMs: number;
  readonly sessionMaxTtlMs: number;
  readonly registration: "open" | "closed" | "invite";
  readonly email: EmailConfig;
  /** The issuer of TOTP key URIs, as authenticator apps show it. */
  readonly totpIssuer: string;
  /** How long after its sign-in a session may begin TOTP enrolment without the password. */
  readonly reauthWindowMs: number;
  /** Passkeys (WebAuthn); undefined when PASSKEYS=off or no RP ID can be had (an IP SERVER_ID). */
  readonly passkeys: PasskeyConfig | undefined;
  readonly argon2: Argon2Params;
  /** Largest request message accepted, in bytes. */
  readonly readMaxBytes: number;
  /** How long /readyz answers 503 before a shutdown stops serving. */
  readonly shutdownDrainMs: number;
  /** How long a shutdown waits for calls in flight before it cuts them off. */
  readonly shutdownGraceMs: number;
  /** How long an hRPC WebSocket may take to send its request. */
  readonly hrpcStreamRequestTimeoutMs: number;
  /** Connection limits and timeouts: see {@link ConnectionConfig}. */
  readonly connections: ConnectionConfig;
  readonly federation: FederationConfig;
  /** How long account events are kept. */
  readonly accountEventRetentionMs: number;
  /** CIDRs of reverse proxies whose forwarded client address is believed. */
  readonly trustedProxies: readonly string[];
  readonly limits: LimitsConfig;
  /**
   * Variables in the environment that are no setting but look like one
   * misspelt (`FEDERATON_ALLOW`), for a start-up warning.
   */
  readonly lookalikes: readonly Lookalike[];
}

/** Email: how codes are sent, and what is offered with them. */
export interface EmailConfig {
  /** `smtp://` or `smtps://`; undefined offers nothing that needs email. */
  readonly smtpUrl: string | undefined;
  readonly from: string;
  /** A registration is finished only once its email's code is entered. */
  readonly verification: boolean;
  readonly codeTtlMs: number;
}

/** Where passkeys are valid: what the browser checks, and cadenza checks again. */
export interface PasskeyConfig {
  /** The WebAuthn relying party ID (a domain): credentials are bound to it. */
  readonly rpId: string;
  /** The exact origins whose pages may use passkeys (clientDataJSON's `origin`). */
  readonly origins: readonly string[];
}

/** Abuse limits; an undefined one is off. */
export interface LimitsConfig {
  readonly login:
    | {
        readonly failuresBeforeDelay: number;
        readonly firstDelayMs: number;
        readonly maxDelayMs: number;
        readonly resetMs: number;
      }
    | undefined;
  readonly beginAuth: Rate | undefined;
  readonly forms: Rate | undefined;
  readonly registrations: Rate | undefined;
  readonly emailsPerAccount: Rate | undefined;
  readonly emailsPerAddress: Rate | undefined;
  readonly loginFederated: Rate | undefined;
  readonly federate: Rate | undefined;
  readonly liveFlowsPerAddress: number | undefined;
  readonly streamsPerAddress: number | undefined;
  readonly openStreams: number | undefined;
  /** undefined: no bound (ARGON2_MAX_IN_FLIGHT=off / ARGON2_MAX_QUEUED=off). */
  readonly argon2: { readonly inFlight: number | undefined; readonly queued: number | undefined };
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
  /** How long a failed key fetch is remembered, and answered without trying again. */
  readonly fetchFailureTtlMs: number;
  /** Most key fetches in flight at once, process-wide. */
  readonly maxFetches: number;
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

/** SERVER_ID's host (brackets off an IPv6 address) and port. */
function serverIdParts(v: SettingValues): { host: string; port: number } {
  const id = v.SERVER_ID ?? `localhost:${v.PORT}`;
  const colon = id.lastIndexOf(":");
  return {
    host: id.slice(0, colon).replace(/^\[|\]$/g, ""),
    port: Number(id.slice(colon + 1)),
  };
}

const isLocalhost = (host: string) => host === "localhost" || host.endsWith(".localhost");

/**
 * Passkeys' RP ID and origins, from WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS or
 * else SERVER_ID: `chat.example.org:443` gives `chat.example.org` and
 * `https://chat.example.org`, `localhost:2289` gives `localhost` and
 * `http://localhost:2289` (browsers treat http://localhost as secure).
 */
function passkeyConfig(v: SettingValues): PasskeyConfig | undefined {
  if (v.PASSKEYS === "off") return undefined;
  const { host, port } = serverIdParts(v);
  const rpId = v.WEBAUTHN_RP_ID ?? host.toLowerCase();
  if (isIP(rpId) !== 0) return undefined;
  const derived = isLocalhost(host)
    ? `http://${host}:${port}`
    : port === 443
      ? `https://${host}`
      : `https://${host}:${port}`;
  const origins = v.WEBAUTHN_ORIGINS.length > 0 ? v.WEBAUTHN_ORIGINS : [derived];
  return Object.freeze({ rpId, origins: Object.freeze([...origins]) });
}

/** What is wrong with the passkey origins, for the start-up report. */
function passkeyOriginProblem(v: SettingValues): string | undefined {
  const passkeys = passkeyConfig(v);
  if (!passkeys || v.WEBAUTHN_ORIGINS.length === 0) return undefined;
  for (const origin of passkeys.origins) {
    const { protocol, hostname } = new URL(origin);
    if (hostname !== passkeys.rpId && !hostname.endsWith(`.${passkeys.rpId}`)) {
      return `WEBAUTHN_ORIGINS=${origin}: its host is neither the RP ID ${passkeys.rpId} nor a subdomain of it, so browsers would refuse every passkey there; fix WEBAUTHN_ORIGINS or WEBAUTHN_RP_ID`;
    }
    if (protocol === "http:" && !isLocalhost(hostname)) {
      return `WEBAUTHN_ORIGINS=${origin}: browsers offer passkeys on http:// only for localhost; use https://`;
    }
  }
  return undefined;
}

/**
 * Rules that involve more than one setting: each returns a problem naming the
 * variables to change, or undefined.
 */
const crossChecks: readonly ((v: SettingValues) => string | undefined)[] = [
  (v) =>
    v.EMAIL_VERIFICATION === "required" && v.SMTP_URL === undefined
      ? "EMAIL_VERIFICATION=required needs SMTP_URL: set the SMTP server codes are sent through, or EMAIL_VERIFICATION=off"
      : undefined,
  (v) =>
    !isLoopbackHost(v.INTERNAL_HOST) && v.INTERNAL_TOKEN === undefined
      ? `INTERNAL_HOST=${v.INTERNAL_HOST} is not a loopback address, so INTERNAL_TOKEN must be set: anyone who can reach the internal port could otherwise introspect sessions and sign tokens as this homeserver`
      : undefined,
  (v) =>
    v.DATABASE_LISTEN_URL !== undefined && v.DATABASE_URL === undefined
      ? "DATABASE_LISTEN_URL is set but DATABASE_URL is not: LISTEN is for Postgres; set DATABASE_URL too, or unset DATABASE_LISTEN_URL to use PGlite"
      : undefined,
  (v) =>
    (v.TLS_CERT === "") !== (v.TLS_KEY === "")
      ? "TLS_CERT and TLS_KEY: set both (PEM file paths) to serve TLS, or neither"
      : undefined,
  (v) =>
    v.SESSION_IDLE_TTL > v.SESSION_MAX_TTL
      ? "SESSION_IDLE_TTL: must not be longer than SESSION_MAX_TTL"
      : undefined,
  passkeyOriginProblem,
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
      problems.push(`${name}=${s.shown?.(given) ?? given}: ${err.message}`);
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
function shape(v: SettingValues, lookalikes: readonly Lookalike[]): Config {
  return Object.freeze({
    lookalikes: Object.freeze(lookalikes),
    host: v.HOST,
    port: v.PORT,
    internal: Object.freeze({
      host: v.INTERNAL_HOST,
      port: v.INTERNAL_PORT,
      token: v.INTERNAL_TOKEN,
    }),
    // PORT=0 (any free port) leaves the derived default `localhost:0`, fine for
    // tests that do not federate.
    serverId: v.SERVER_ID ?? `localhost:${v.PORT}`,
    logLevel: v.LOG_LEVEL,
    databaseUrl: v.DATABASE_URL,
    databaseListenUrl: v.DATABASE_LISTEN_URL ?? v.DATABASE_URL,
    databasePoolSize: v.DATABASE_POOL_SIZE,
    databaseConnectTimeoutMs: v.DATABASE_CONNECT_TIMEOUT,
    databaseQueryTimeoutMs: v.DATABASE_QUERY_TIMEOUT,
    readyTimeoutMs: v.READY_TIMEOUT,
    dataDir: v.DATA_DIR,
    tls:
      v.TLS_CERT !== "" && v.TLS_KEY !== ""
        ? Object.freeze({ certFile: v.TLS_CERT, keyFile: v.TLS_KEY })
        : undefined,
    corsOrigins: v.CORS_ORIGINS,
    webUi: v.WEB_UI === "on",
    flowTtlMs: v.FLOW_TTL,
    sessionIdleTtlMs: v.SESSION_IDLE_TTL,
    sessionMaxTtlMs: v.SESSION_MAX_TTL,
    registration: v.REGISTRATION,
    email: Object.freeze({
      smtpUrl: v.SMTP_URL,
      from:
        v.SMTP_FROM ??
        `cadenza@${(v.SERVER_ID ?? "localhost").replace(/:\d+$/, "").replace(/^\[|\]$/g, "")}`,
      verification: v.EMAIL_VERIFICATION === "required",
      codeTtlMs: v.EMAIL_CODE_TTL,
    }),
    totpIssuer:
      v.TOTP_ISSUER ?? (v.SERVER_ID ?? "localhost").replace(/:\d+$/, "").replace(/^\[|\]$/g, ""),
    reauthWindowMs: v.REAUTH_WINDOW,
    passkeys: passkeyConfig(v),
    argon2: Object.freeze({
      memoryKib: v.ARGON2_MEMORY_KIB,
      iterations: v.ARGON2_ITERATIONS,
      parallelism: v.ARGON2_PARALLELISM,
    }),
    readMaxBytes: v.READ_MAX_BYTES,
    shutdownDrainMs: v.SHUTDOWN_DRAIN,
    shutdownGraceMs: v.SHUTDOWN_GRACE,
    hrpcStreamRequestTimeoutMs: v.HRPC_STREAM_REQUEST_TIMEOUT,
    accountEventRetentionMs: v.ACCOUNT_EVENT_RETENTION,
    trustedProxies: v.TRUSTED_PROXIES,
    limits: Object.freeze({
      login:
        v.LOGIN_FAILURES_BEFORE_DELAY === undefined
          ? undefined
          : Object.freeze({
              failuresBeforeDelay: v.LOGIN_FAILURES_BEFORE_DELAY,
              firstDelayMs: v.LOGIN_FIRST_DELAY,
              maxDelayMs: v.LOGIN_MAX_DELAY,
              resetMs: v.LOGIN_FAILURE_RESET,
            }),
      beginAuth: v.LIMIT_BEGIN_AUTH,
      forms: v.LIMIT_FORMS,
      registrations: v.LIMIT_REGISTRATIONS,
      emailsPerAccount: v.LIMIT_EMAILS_PER_ACCOUNT,
      emailsPerAddress: v.LIMIT_EMAILS_PER_ADDRESS,
      loginFederated: v.LIMIT_LOGIN_FEDERATED,
      federate: v.LIMIT_FEDERATE,
      liveFlowsPerAddress: v.LIMIT_LIVE_FLOWS,
      streamsPerAddress: v.LIMIT_STREAMS_PER_ADDRESS,
      openStreams: v.MAX_OPEN_STREAMS,
      argon2: Object.freeze({ inFlight: v.ARGON2_MAX_IN_FLIGHT, queued: v.ARGON2_MAX_QUEUED }),
    }),
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
      fetchFailureTtlMs: v.FEDERATION_FETCH_FAILURE_TTL,
      maxFetches: v.FEDERATION_MAX_FETCHES,
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
  const present = Object.keys(env).filter((name) => env[name] !== undefined);
  return shape(values, settingLookalikes(present, Object.keys(settings)));
}
