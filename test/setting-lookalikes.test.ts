import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { editDistance, settingLookalikes } from "../src/setting-lookalikes.js";
import { settings } from "../src/settings.js";
import { startupWarnings } from "../src/startup-checks.js";

const names = Object.keys(settings);
const warningsFor = (env: Record<string, string>) =>
  startupWarnings(loadConfig({ ...env })).filter((w) => w.includes("not a cadenza setting"));

describe("variables that look like a misspelt setting", () => {
  it.each([
    ["FEDERATON_ALLOW", "FEDERATION_ALLOW"],
    ["DATABSE_URL", "DATABASE_URL"],
    ["LOGLEVEL", "LOG_LEVEL"],
    ["DATADIR", "DATA_DIR"],
    ["HSOT", "HOST"],
    ["PROT", "PORT"],
    ["SESION_IDLE_TTL", "SESSION_IDLE_TTL"],
    ["LIMIT_FORM", "LIMIT_FORMS"],
    ["TLS_CERT_FILE", "TLS_CERT"],
    ["KEY_ENCRYPTION_KEY_FILE", "KEY_ENCRYPTION_KEY"],
    ["CADENZA_DATABASE_URL", "DATABASE_URL"],
  ])("%s: did you mean %s?", (name, meant) => {
    expect(warningsFor({ [name]: "x" })).toEqual([
      `${name} is not a cadenza setting; did you mean ${meant}?`,
    ]);
  });

  it("leaves the environment's other variables alone", () => {
    const unrelated = [
      "PATH",
      "HOME",
      "HOSTNAME",
      "PWD",
      "TERM",
      "USER",
      "LANG",
      "TZ",
      "NODE_ENV",
      "NODE_OPTIONS",
      "npm_config_cache",
      "npm_lifecycle_event",
      "PGHOST",
      "PGPORT",
      "PGUSER",
      "PGPASSWORD",
      "PGDATABASE",
      "UV_THREADPOOL_SIZE",
      "TEST_DATABASE_URL",
      "KUBERNETES_SERVICE_HOST",
      // Kubernetes' service links for a service named cadenza.
      "CADENZA_PORT",
      "CADENZA_SERVICE_HOST",
      "CADENZA_SERVICE_PORT",
      "SESSION_MANAGER",
      "HTTP_PROXY",
      "Port",
    ];
    expect(settingLookalikes(unrelated, names)).toEqual([]);
  });

  it("is silent about the settings themselves, and is a warning, never an error", () => {
    expect(warningsFor({ FEDERATION_ALLOW: "a.example.org:2289", PORT: "2289" })).toEqual([]);
    expect(() => loadConfig({ FEDERATON_ALLOW: "not even an id" })).not.toThrow();
  });

  it.each([
    ["PORT", "PORT", 0],
    ["PROT", "PORT", 1],
    ["POTR", "PORT", 1],
    ["FEDERATON_ALLOW", "FEDERATION_ALLOW", 1],
    ["HOME", "HOST", 2],
    ["kitten", "sitting", 3],
  ])("edit distance %s → %s is %d", (a, b, d) => expect(editDistance(a, b)).toBe(d));
});
