import { createHmac, randomBytes, randomInt } from "node:crypto";
import { Code } from "@connectrpc/connect";
import type { Clock } from "../clock.js";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";
import type { CodePurpose } from "./flow-machine.js";

/**
 * The codes cadenza emails (password reset, account deletion, email
 * verification): 8 characters from the CSPRNG in Crockford's base32 (40
 * bits, easy to type: no I, L, O or U, case and dashes ignored), stored only
 * as an HMAC under a server secret, bound to one flow and purpose, spent by
 * its first correct entry or its fifth wrong one, and expiring after
 * EMAIL_CODE_TTL.
 */

/** Crockford's base32: no I, L, O or U, so what is read aloud or typed is unambiguous. */
export const CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/** Wrong entries a code survives. */
export const CODE_ATTEMPTS = 5;

export const codeErrors = {
  /** Harmony's own identifier for a bad single-use token (PROTOCOL.md §5). */
  invalidCode: {
    identifier: "h.invalid-single-use-token",
    code: Code.Unauthenticated,
    message:
      "that code is not right, or no longer valid: check it, or go back and ask for a new one",
  },
} as const satisfies Record<string, ErrorSpec>;

export interface StoredCode {
  readonly userId: bigint | null;
  readonly payload: unknown;
}

export interface EmailCodeStore {
  /** Replaces the flow's code. */
  put(
    q: Queryable,
    code: {
      flowKey: Buffer;
      purpose: CodePurpose;
      userId: bigint | null;
      codeHmac: Buffer;
      attempts: number;
      expiresAt: number;
      payload: unknown;
    },
  ): Promise<void>;
  /**
   * The flow's live code for `purpose` when `codeHmac` is its HMAC, leaving
   * it unspent; a wrong entry is counted, in the same statement. Undefined
   * when the code was wrong, spent, exhausted or expired.
   */
  check(
    q: Queryable,
    flowKey: Buffer,
    purpose: CodePurpose,
    codeHmac: Buffer,
    now: number,
  ): Promise<StoredCode | undefined>;
  /** Spends the code if it is still live and `codeHmac` is its HMAC; false otherwise. */
  spend(
    q: Queryable,
    flowKey: Buffer,
    purpose: CodePurpose,
    codeHmac: Buffer,
    now: number,
  ): Promise<boolean>;
  deleteExpired(q: Queryable, now: number): Promise<number>;
}

export interface EmailCodes {
  /**
   * A new code for a flow, replacing any before. For an address nobody
   * registered, pass `userId` null: a row is kept all the same (whose code
   * nobody knows), so the flow goes on exactly as for a known one.
   */
  issue(
    q: Queryable,
    flowKey: Buffer,
    purpose: CodePurpose,
    userId: bigint | null,
    payload?: unknown,
  ): Promise<string>;
  /**
   * The code's record when `entered` is the flow's live code (still unspent,
   * so a step that fails after this does not cost the user their code);
   * throws `h.invalid-single-use-token` otherwise, counting a wrong entry.
   */
  check(flowKey: Buffer, purpose: CodePurpose, entered: string): Promise<StoredCode>;
  /**
   * Spends the code inside the transaction of the change it allows; throws
   * `h.invalid-single-use-token` when another call spent it first.
   */
  spend(q: Queryable, flowKey: Buffer, purpose: CodePurpose, entered: string): Promise<void>;
  sweep(): Promise<number>;
}

/** A code as it is shown: `XXXX-XXXX`. */
function newCode(): string {
  let code = "";
  for (let i = 0; i < 8; i++) code += CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  return `${code.slice(0, 4)}-${code.slice(4)}`;
}

/** What a typed code is, read generously: case, spaces and dashes ignored, I/L as 1, O as 0. */
export function normalizeCode(entered: string): string {
  return entered.toUpperCase().replace(/[\s-]/g, "").replace(/[IL]/g, "1").replace(/O/g, "0");
}

export function createEmailCodes(deps: {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: EmailCodeStore;
  readonly secret: Buffer;
  readonly ttlMs: number;
}): EmailCodes {
  const { db, clock, store, secret, ttlMs } = deps;
  const hmac = (flowKey: Buffer, purpose: CodePurpose, code: string): Buffer =>
    createHmac("sha256", secret)
      .update(`${purpose}\n${flowKey.toString("hex")}\n${normalizeCode(code)}`)
      .digest();

  return {
    async issue(q, flowKey, purpose, userId, payload) {
      const code = newCode();
      // For nobody's address, store the HMAC of a code nobody was sent.
      const stored =
        userId === null && payload === undefined ? randomBytes(8).toString("hex") : code;
      await store.put(q, {
        flowKey,
        purpose,
        userId,
        codeHmac: hmac(flowKey, purpose, stored),
        attempts: CODE_ATTEMPTS,
        expiresAt: clock.now() + ttlMs,
        payload: payload ?? null,
      });
      return code;
    },
    async check(flowKey, purpose, entered) {
      const found =
        entered.trim() === ""
          ? undefined
          : await store.check(db, flowKey, purpose, hmac(flowKey, purpose, entered), clock.now());
      if (!found) throw new HarmonyError(codeErrors.invalidCode);
      return found;
    },
    async spend(q, flowKey, purpose, entered) {
      if (!(await store.spend(q, flowKey, purpose, hmac(flowKey, purpose, entered), clock.now()))) {
        throw new HarmonyError(codeErrors.invalidCode);
      }
    },
    sweep: () => store.deleteExpired(db, clock.now()),
  };
}
