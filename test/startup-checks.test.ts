import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.js";
import { isLoopbackHost } from "../src/net-address.js";
import { key32 } from "../src/setting-parsers.js";
import { startupWarnings } from "../src/startup-checks.js";
import { runCli } from "./helpers/process.js";

describe("startup warnings", () => {
  it.each([
    ["127.0.0.1", true],
    ["127.8.9.10", true],
    ["::1", true],
    ["[::1]", true],
    ["localhost", true],
    ["0.0.0.0", false],
    ["::", false],
    ["192.168.1.4", false],
    ["chat.example.org", false],
  ])("%s is loopback: %s", (host, loopback) => expect(isLoopbackHost(host)).toBe(loopback));

  const kek = Buffer.alloc(32, 1).toString("base64");
  const token = "an-internal-token-of-enough-length";

  it("warns about a plaintext signing key on a non-loopback listener, naming the command", () => {
    const [warning, ...rest] = startupWarnings(
      loadConfig({ HOST: "0.0.0.0", INTERNAL_TOKEN: token }),
    );
    expect(rest).toEqual([]);
    expect(warning).toContain("KEY_ENCRYPTION_KEY is unset");
    expect(warning).toContain("key generate-encryption-key");
  });

  it("warns about an internal port open to every local process on a non-loopback listener", () => {
    const [warning, ...rest] = startupWarnings(
      loadConfig({ HOST: "0.0.0.0", KEY_ENCRYPTION_KEY: kek }),
    );
    expect(rest).toEqual([]);
    expect(warning).toContain("INTERNAL_TOKEN is unset");
    expect(warning).toContain("127.0.0.1:2290");
  });

  it("takes a short INTERNAL_TOKEN, with a warning, and refuses one with a space", () => {
    const [warning, ...rest] = startupWarnings(loadConfig({ INTERNAL_TOKEN: "secret" }));
    expect(rest).toEqual([]);
    expect(warning).toContain("INTERNAL_TOKEN is only 6 characters long");
    expect(() => loadConfig({ INTERNAL_TOKEN: "two words" })).toThrow("no spaces");
  });

  it("is silent on loopback, or with KEY_ENCRYPTION_KEY and INTERNAL_TOKEN set", () => {
    expect(startupWarnings(loadConfig({}))).toEqual([]);
    expect(
      startupWarnings(
        loadConfig({ HOST: "0.0.0.0", KEY_ENCRYPTION_KEY: kek, INTERNAL_TOKEN: token }),
      ),
    ).toEqual([]);
  });

  it("prints a fresh KEY_ENCRYPTION_KEY that the setting accepts", async () => {
    const [a, b] = await Promise.all([
      runCli(["key", "generate-encryption-key"], {}),
      runCli(["key", "generate-encryption-key"], {}),
    ]);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(key32(a.stdout.trim())).toHaveLength(32);
    expect(a.stdout).not.toBe(b.stdout);
  });
});
