/**
 * cadenza's configuration: every environment variable the service reads, parsed
 * once into a frozen, typed object. This is the only module that reads
 * `process.env`.
 */

import { canonicalServerId } from "./federation/server-ids.js";

/** Log levels understood by pino, plus `silent`. */
export const logLevels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
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

/** Thrown by {@link loadConfig} with every problem found, one per line. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

/** Every variable with its default, in the order the README lists them. */
export const defaults = {
  HOST: "127.0.0.1",
  PORT: "2289",
  SERVER_ID: "localhost:<PORT>",
  LOG_LEVEL: "info",
  DATABASE_URL: "",
  DATABASE_POOL_SIZE: "10",
  DATA_DIR: "./data",
  TLS_CERT: "",
  TLS_KEY: "",
  CORS_ORIGINS: "",
  FLOW_TTL: "15m",
  SESSION_IDLE_TTL: "30d",
  SESSION_MAX_TTL: "180d",
  REGISTRATION: "open",
  ARGON2_MEMORY_KIB: "19456",
  ARGON2_ITERATIONS: "2",
  ARGON2_PARALLELISM: "1",
  READ_MAX_BYTES: "65536",
  SHUTDOWN_GRACE: "10s",
  HRPC_STREAM_REQUEST_TIMEOUT: "10s",
  FEDERATION: "on",
  FEDERATION_ALLOW: "",
  FEDERATION_DENY: "",
  FEDERATION_ALLOW_INSECURE: "false",
  FEDERATION_KEY_TTL: "1d",
  FEDERATION_TOKEN_TTL: "5m",
  FEDERATION_ACCEPT_UNTIMED: "true",
  FEDERATION_TIMEOUT: "5s",
  KEY_ENCRYPTION_KEY: "",
} as const;

type Env = Readonly<Record<string, string | undefined>>;

const durationUnits: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parses a duration such as `15m`, `30d`, `90s` or `500ms`; a bare number is
 * seconds. Returns undefined for anything else.
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!match) return undefined;
  const unit = durationUnits[match[2] ?? "s"];
  const value = Number(match[1]) * (unit ?? 1000);
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * Reads and validates the configuration. Throws a {@link ConfigError} naming
 * every bad variable at once, so an operator fixes them in one go.
 */
export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = [];
  const get = (name: keyof typeof defaults): string => {
    const value = env[name];
    return value === undefined || value.trim() === "" ? defaults[name] : value.trim();
  };

  const int = (name: keyof typeof defaults, min: number, max: number): number => {
    const text = get(name);
    const value = /^\d+$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      problems.push(`${name}=${text}: expected a whole number from ${min} to ${max}`);
      return Number(defaults[name].replace(/\D/g, "")) || min;
    }
    return value;
  };

  const duration = (name: keyof typeof defaults, minMs: number): number => {
    const text = get(name);
    const value = parseDuration(text);
    if (value === undefined || value < minMs) {
      problems.push(
        `${name}=${text}: expected a duration of at least ${minMs} ms such as 90s, 15m, 12h or 30d`,
      );
      return parseDuration(defaults[name]) ?? minMs;
    }
    return value;
  };

  const oneOf = <T extends string>(name: keyof typeof defaults, allowed: readonly T[]): T => {
    const text = get(name).toLowerCase();
    if (!(allowed as readonly string[]).includes(text)) {
      problems.push(`${name}=${text}: expected one of ${allowed.join(", ")}`);
      return defaults[name] as T;
    }
    return text as T;
  };

  const bool = (name: keyof typeof defaults): boolean => {
    const text = get(name).toLowerCase();
    if (["true", "on", "yes", "1"].includes(text)) return true;
    if (["false", "off", "no", "0"].includes(text)) return false;
    problems.push(`${name}=${text}: expected true or false (on or off)`);
    return ["true", "on"].includes(defaults[name]);
  };

  const serverIds = (name: keyof typeof defaults): string[] =>
    get(name)
      .split(",")
      .map((id) => id.trim())
      .filter((id) => id !== "")
      .flatMap((id) => {
        const canonical = canonicalServerId(id);
        if (canonical === undefined) {
          problems.push(`${name}: ${id} is not a server ID; expected domain:port`);
          return [];
        }
        return [canonical];
      });

  const host = get("HOST");
  const port = int("PORT", 0, 65535);
  const explicitServerId = env.SERVER_ID?.trim() ?? "";
  const serverIdText = explicitServerId !== "" ? explicitServerId : `localhost:${port}`;
  const serverId = serverIdText.includes("://") ? undefined : canonicalServerId(serverIdText);
  // PORT=0 (any free port) leaves the derived default `localhost:0`, fine for
  // tests that do not federate; a SERVER_ID that is set must be valid.
  if (serverId === undefined && explicitServerId !== "") {
    problems.push(`SERVER_ID=${serverIdText}: expected domain:port, such as chat.example.org:2289`);
  }
  const logLevel = oneOf("LOG_LEVEL", logLevels);

  const databaseUrlText = get("DATABASE_URL");
  let databaseUrl: string | undefined;
  if (databaseUrlText !== "") {
    if (!/^postgres(ql)?:\/\//.test(databaseUrlText)) {
      problems.push("DATABASE_URL: expected a postgres:// or postgresql:// connection string");
    } else {
      databaseUrl = databaseUrlText;
    }
  }
  const databasePoolSize = int("DATABASE_POOL_SIZE", 1, 1000);
  const dataDir = get("DATA_DIR");

  const certFile = get("TLS_CERT");
  const keyFile = get("TLS_KEY");
  if ((certFile === "") !== (keyFile === "")) {
    problems.push("TLS_CERT and TLS_KEY: set both (PEM file paths) to serve TLS, or neither");
  }
  const tls = certFile !== "" && keyFile !== "" ? { certFile, keyFile } : undefined;

  const corsOrigins = get("CORS_ORIGINS")
    .split(",")
    .map((o) => o.trim())
    .filter((o) => o !== "");
  for (const origin of corsOrigins) {
    if (origin !== "*" && !/^https?:\/\/[^/\s]+$/.test(origin)) {
      problems.push(
        `CORS_ORIGINS: ${origin} is not an origin; expected scheme://host[:port] with no path, or *`,
      );
    }
  }

  const flowTtlMs = duration("FLOW_TTL", 10_000);
  const sessionIdleTtlMs = duration("SESSION_IDLE_TTL", 60_000);
  const sessionMaxTtlMs = duration("SESSION_MAX_TTL", 60_000);
  if (sessionIdleTtlMs > sessionMaxTtlMs) {
    problems.push("SESSION_IDLE_TTL: must not be longer than SESSION_MAX_TTL");
  }
  const registration = oneOf("REGISTRATION", ["open", "closed"] as const);

  const parallelism = int("ARGON2_PARALLELISM", 1, 16);
  const argon2 = {
    memoryKib: int("ARGON2_MEMORY_KIB", 8 * parallelism, 4_194_304),
    iterations: int("ARGON2_ITERATIONS", 1, 100),
    parallelism,
  };
  const readMaxBytes = int("READ_MAX_BYTES", 1024, 16 * 1024 * 1024);
  const shutdownGraceMs = duration("SHUTDOWN_GRACE", 0);
  const hrpcStreamRequestTimeoutMs = duration("HRPC_STREAM_REQUEST_TIMEOUT", 100);

  const kekText = get("KEY_ENCRYPTION_KEY");
  let keyEncryptionKey: Buffer | undefined;
  if (kekText !== "") {
    keyEncryptionKey = /^[0-9a-fA-F]{64}$/.test(kekText)
      ? Buffer.from(kekText, "hex")
      : Buffer.from(kekText, "base64");
    if (keyEncryptionKey.length !== 32 || !/^[A-Za-z0-9+/=_-]+$/.test(kekText)) {
      problems.push(
        "KEY_ENCRYPTION_KEY: expected 32 bytes as 64 hex digits or base64 (openssl rand -base64 32)",
      );
      keyEncryptionKey = undefined;
    }
  }
  const federation = {
    enabled: oneOf("FEDERATION", ["on", "off"] as const) === "on",
    allow: serverIds("FEDERATION_ALLOW"),
    deny: serverIds("FEDERATION_DENY"),
    allowInsecure: bool("FEDERATION_ALLOW_INSECURE"),
    keyTtlMs: duration("FEDERATION_KEY_TTL", 60_000),
    tokenTtlMs: duration("FEDERATION_TOKEN_TTL", 10_000),
    acceptUntimed: bool("FEDERATION_ACCEPT_UNTIMED"),
    requestTimeoutMs: duration("FEDERATION_TIMEOUT", 100),
    keyEncryptionKey,
  };

  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    host,
    port,
    serverId: serverId ?? serverIdText,
    logLevel,
    databaseUrl,
    databasePoolSize,
    dataDir,
    tls: tls && Object.freeze(tls),
    corsOrigins: Object.freeze(corsOrigins),
    flowTtlMs,
    sessionIdleTtlMs,
    sessionMaxTtlMs,
    registration,
    argon2: Object.freeze(argon2),
    readMaxBytes,
    shutdownGraceMs,
    hrpcStreamRequestTimeoutMs,
    federation: Object.freeze({
      ...federation,
      allow: Object.freeze(federation.allow),
      deny: Object.freeze(federation.deny),
    }),
  });
}
