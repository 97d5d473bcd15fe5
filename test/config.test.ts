import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig, parseDuration } from "../src/config.js";
import { replaceSettingsTable, settings } from "../src/settings.js";

describe("loadConfig", () => {
  it("has the documented defaults", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      host: "127.0.0.1",
      port: 2289,
      serverId: "localhost:2289",
      logLevel: "info",
      databaseUrl: undefined,
      databasePoolSize: 10,
      databaseConnectTimeoutMs: 5_000,
      databaseQueryTimeoutMs: 10_000,
      readyTimeoutMs: 2_000,
      dataDir: "./data",
      tls: undefined,
      corsOrigins: [],
      flowTtlMs: 15 * 60_000,
      sessionIdleTtlMs: 30 * 86_400_000,
      sessionMaxTtlMs: 180 * 86_400_000,
      registration: "open",
      argon2: { memoryKib: 19456, iterations: 2, parallelism: 1 },
      readMaxBytes: 65536,
      connections: {
        requestDeadlineMs: 10_000,
        requestTimeoutMs: 30_000,
        idleTimeoutMs: 75_000,
        maxConnections: 10_000,
        maxConnectionsPerAddress: 256,
        http2MaxConcurrentStreams: 100,
      },
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it("derives SERVER_ID from PORT and reads every variable", () => {
    const config = loadConfig({
      PORT: "8080",
      CORS_ORIGINS: "https://app.example.org, http://localhost:5173",
      REGISTRATION: "closed",
      FLOW_TTL: "90s",
      DATABASE_URL: "postgres://u@db:5432/cadenza",
      DATABASE_CONNECT_TIMEOUT: "500ms",
      DATABASE_QUERY_TIMEOUT: "30s",
      READY_TIMEOUT: "1s",
      TLS_CERT: "/c.pem",
      TLS_KEY: "/k.pem",
    });
    expect(config.serverId).toBe("localhost:8080");
    expect(config.corsOrigins).toEqual(["https://app.example.org", "http://localhost:5173"]);
    expect(config.registration).toBe("closed");
    expect(config.flowTtlMs).toBe(90_000);
    expect(config.databaseUrl).toBe("postgres://u@db:5432/cadenza");
    expect(config).toMatchObject({
      databaseConnectTimeoutMs: 500,
      databaseQueryTimeoutMs: 30_000,
      readyTimeoutMs: 1_000,
    });
    expect(config.tls).toEqual({ certFile: "/c.pem", keyFile: "/k.pem" });
  });

  it("names every bad variable in one error", () => {
    let error: unknown;
    try {
      loadConfig({
        PORT: "http",
        LOG_LEVEL: "loud",
        FLOW_TTL: "soon",
        REGISTRATION: "maybe",
        TLS_CERT: "/only-cert.pem",
        CORS_ORIGINS: "https://ok.example.org,https://bad.example.org/path",
        SESSION_IDLE_TTL: "200d",
        SERVER_ID: "no-port.example.org",
        DATABASE_URL: "mysql://x",
      });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as ConfigError).message;
    for (const name of [
      "PORT",
      "LOG_LEVEL",
      "FLOW_TTL",
      "REGISTRATION",
      "TLS_CERT and TLS_KEY",
      "CORS_ORIGINS",
      "SESSION_IDLE_TTL",
      "SERVER_ID",
      "DATABASE_URL",
    ]) {
      expect(message).toContain(name);
    }
    expect((error as ConfigError).problems).toHaveLength(9);
  });
});

describe("parseDuration", () => {
  it.each([
    ["500ms", 500],
    ["90", 90_000],
    ["90s", 90_000],
    ["15m", 900_000],
    ["12h", 43_200_000],
    ["30d", 2_592_000_000],
  ])("%s is %d ms", (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(["", "1.5h", "-1s", "10 minutes", "1w"])("rejects %j", (text) =>
    expect(parseDuration(text)).toBeUndefined(),
  );
});

describe("the settings table", () => {
  it.each(Object.entries(settings))("%s: its default parses and it is documented", (_, s) => {
    expect(() => s.parse(s.default)).not.toThrow();
    expect(s.doc.length).toBeGreaterThan(0);
  });

  it("is what the README's configuration table shows (npm run docs)", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    expect(replaceSettingsTable(readme)).toBe(readme);
  });
});
