import { describe, expect, it } from "vitest";
import { createArgon2Hasher, parseArgon2idPhc } from "../src/auth/password-hasher.js";
import { loadConfig } from "../src/config.js";

describe("argon2id hasher", () => {
  it("uses OWASP's parameters by default, as a PHC string", async () => {
    const hasher = createArgon2Hasher(loadConfig({}).argon2);
    const phc = await hasher.hash("correct horse battery staple");
    expect(phc).toMatch(
      /^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/,
    );
    expect(await hasher.verify(phc, "correct horse battery staple")).toBe(true);
    expect(await hasher.verify(phc, "correct horse battery stapl")).toBe(false);
    expect(hasher.needsRehash(phc)).toBe(false);
  });

  it("salts every hash", async () => {
    const hasher = createArgon2Hasher({ memoryKib: 64, iterations: 1, parallelism: 1 });
    expect(await hasher.hash("same")).not.toBe(await hasher.hash("same"));
  });

  it("flags hashes made with other parameters for upgrade", async () => {
    const old = createArgon2Hasher({ memoryKib: 64, iterations: 1, parallelism: 1 });
    const current = createArgon2Hasher({ memoryKib: 128, iterations: 2, parallelism: 1 });
    const phc = await old.hash("pw");
    expect(parseArgon2idPhc(phc)).toEqual({ memoryKib: 64, iterations: 1, parallelism: 1 });
    expect(current.needsRehash(phc)).toBe(true);
    expect(await current.verify(phc, "pw")).toBe(true);
  });

  it("treats a malformed or non-argon2id hash as a mismatch", async () => {
    const hasher = createArgon2Hasher({ memoryKib: 64, iterations: 1, parallelism: 1 });
    expect(await hasher.verify("not a hash", "pw")).toBe(false);
    expect(await hasher.verify("$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "pw")).toBe(false);
    expect(hasher.needsRehash("$2b$10$abcdefghijklmnopqrstuv")).toBe(true);
  });
});
