import { randomBytes } from "node:crypto";
import { type Algorithm, hash, verify } from "@node-rs/argon2";
import type { Argon2Params } from "../config.js";

/** Hashes and verifies passwords; argon2id in production, a cheaper one in tests. */
export interface PasswordHasher {
  /** A PHC string for `password`, with a fresh random salt. */
  hash(password: string): Promise<string>;
  /** Whether `password` matches `phc`. False (never a throw) for a malformed hash. */
  verify(phc: string, password: string): Promise<boolean>;
  /** Whether `phc` was made with other parameters than the current ones. */
  needsRehash(phc: string): boolean;
}

/** The parameters in an argon2id PHC string, or undefined when it is not one. */
export function parseArgon2idPhc(phc: string): Argon2Params | undefined {
  const match = /^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/.exec(
    phc,
  );
  if (!match) return undefined;
  return {
    memoryKib: Number(match[1]),
    iterations: Number(match[2]),
    parallelism: Number(match[3]),
  };
}

// The value of @node-rs/argon2's const enum `Algorithm.Argon2id`, which
// verbatimModuleSyntax cannot read from its declaration file.
const argon2id = 2 as Algorithm.Argon2id;

/**
 * argon2id (RFC 9106) through @node-rs/argon2, which runs off the event loop on
 * libuv's thread pool. Salts are 16 random bytes, hashes 32 bytes.
 */
export function createArgon2Hasher(params: Argon2Params): PasswordHasher {
  const options = {
    algorithm: argon2id,
    memoryCost: params.memoryKib,
    timeCost: params.iterations,
    parallelism: params.parallelism,
    outputLen: 32,
  } as const;
  return {
    hash: (password) => hash(password, { ...options, salt: randomBytes(16) }),
    async verify(phc, password) {
      if (parseArgon2idPhc(phc) === undefined) return false;
      try {
        return await verify(phc, password);
      } catch {
        return false;
      }
    },
    needsRehash(phc) {
      const found = parseArgon2idPhc(phc);
      return (
        found === undefined ||
        found.memoryKib !== params.memoryKib ||
        found.iterations !== params.iterations ||
        found.parallelism !== params.parallelism
      );
    },
  };
}
