import { createHmac, hkdfSync, randomBytes, randomInt } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { Secret, TOTP } from "otpauth";
import { toString as qrCode } from "qrcode";
import type { Audit } from "../audit.js";
import type { Caller } from "../caller.js";
import type { Clock } from "../clock.js";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";
import type { AccountEvents } from "../events/account-events.js";
import { decryptSeed, encryptSeed } from "../federation/server-keys.js";
import type { Limits } from "../limits/limits.js";
import { adminErrors } from "./account-admin.js";
import { emailKey } from "./account-rules.js";
import type { Accounts } from "./accounts.js";
import { authErrors } from "./auth-errors.js";
import { CODE_ALPHABET, normalizeCode } from "./email-codes.js";
import { sha256 } from "./random-ids.js";

/**
 * A second factor for password logins: TOTP (RFC 6238) with single-use
 * recovery codes. The user enrols through the account service; the login
 * flow then asks for a code after the password (flow-machine.ts, step
 * `totp`). One code, one use: a TOTP code is accepted only for a time step
 * later than the last one accepted, decided in Postgres so that replicas
 * agree. The HMAC and code comparisons are otpauth's (RFC 4226 truncation,
 * compared with `crypto.timingSafeEqual`), not hand-written.
 */

/** What every authenticator app supports (several ignore any other parameters). */
const TOTP_PARAMS = { algorithm: "SHA1", digits: 6, period: 30 } as const;
/** 160 bits, the HMAC-SHA-1 key length RFC 4226 §4 recommends. */
const SECRET_BYTES = 20;
/** Codes of the step before and after the current one are accepted (clock skew). */
const SKEW_STEPS = 1;
export const RECOVERY_CODE_COUNT = 10;
/** 16 Crockford base32 characters: 80 bits from the CSPRNG. */
const RECOVERY_CODE_CHARS = 16;

export const secondFactorErrors = {
  /** cadenza's own. */
  alreadyEnabled: {
    identifier: "h.totp-already-enabled",
    code: Code.FailedPrecondition,
    message:
      "TOTP is already on for this account: turn it off first (DisableTotp) to enrol another authenticator",
  },
  /** cadenza's own. */
  notEnrolling: {
    identifier: "h.totp-not-enrolling",
    code: Code.FailedPrecondition,
    message: "no TOTP enrolment is waiting for its code: call BeginTotpEnrollment first",
  },
  /** cadenza's own. */
  passwordNeeded: {
    identifier: "h.password-needed",
    code: Code.PermissionDenied,
    message:
      "this session signed in too long ago to begin TOTP enrolment alone: send the account's password as well, or sign in again",
  },
  /** cadenza's own. */
  notEnabled: {
    identifier: "h.totp-not-enabled",
    code: Code.FailedPrecondition,
    message: "TOTP is not on for this account: enrol with BeginTotpEnrollment",
  },
} as const satisfies Record<string, ErrorSpec>;

export interface StoredTotp {
  /** The sealed secret (see {@link sealSecret}). */
  readonly secret: Uint8Array;
  /** When the enrolment was confirmed; undefined while it awaits its code. */
  readonly enabledAt: number | undefined;
  /** The newest time step whose code was accepted. */
  readonly lastStep: number;
  /** Whether an operator disabled the account. */
  readonly userDisabled: boolean;
}

export interface SecondFactorStore {
  find(q: Queryable, userId: bigint): Promise<StoredTotp | undefined>;
  /** Stores an enrolment awaiting its code, replacing an unconfirmed one; false when TOTP is on. */
  putPending(q: Queryable, userId: bigint, secret: Uint8Array, now: number): Promise<boolean>;
  /** Turns the pending enrolment on, accepting `step`; false when there is none or it moved. */
  enable(q: Queryable, userId: bigint, step: number, now: number): Promise<boolean>;
  /** Accepts `step` for an enabled factor if it is later than the last accepted; else false. */
  useStep(q: Queryable, userId: bigint, step: number): Promise<boolean>;
  /** Deletes the factor and the recovery codes; true when a factor that was on went. */
  remove(q: Queryable, userId: bigint): Promise<boolean>;
  replaceRecoveryCodes(q: Queryable, userId: bigint, hmacs: readonly Buffer[]): Promise<void>;
  hasRecoveryCode(q: Queryable, userId: bigint, hmac: Buffer): Promise<boolean>;
  /** Deletes the code; false when it was not there (wrong, or used meanwhile). */
  spendRecoveryCode(q: Queryable, userId: bigint, hmac: Buffer): Promise<boolean>;
  recoveryCodesLeft(q: Queryable, userId: bigint): Promise<number>;
}

/** A code that matched, not yet spent: spend it in the transaction of what it allows. */
export type CheckedCode =
  | { readonly kind: "totp"; readonly step: number }
  | { readonly kind: "recovery"; readonly hmac: Buffer };

export interface SecondFactorStatus {
  readonly enabled: boolean;
  readonly enabledAt: number | undefined;
  readonly pending: boolean;
  readonly recoveryCodesLeft: number;
}

export interface TotpEnrollment {
  /** base32, for typing in by hand. */
  readonly secret: string;
  readonly uri: string;
  /** The URI as a QR code, an SVG document. */
  readonly qrCodeSvg: string;
}

export interface SecondFactor {
  status(userId: bigint): Promise<SecondFactorStatus>;
  /** Whether a password login of `userId` needs a code (one indexed lookup). */
  enabled(userId: bigint): Promise<boolean>;
  /**
   * Begins enrolment for the session's user. A session younger than
   * REAUTH_WINDOW may do it alone; an older one needs `password` (checked on
   * the login throttle whenever it is given), or `h.password-needed`.
   */
  begin(session: ReauthProof, password: string, caller: Caller): Promise<TotpEnrollment>;
  /** Turns TOTP on with a code for the pending secret; returns the recovery codes. */
  confirm(userId: bigint, code: string, caller: Caller): Promise<string[]>;
  regenerateRecoveryCodes(userId: bigint, code: string, caller: Caller): Promise<string[]>;
  disable(userId: bigint, code: string, password: string, caller: Caller): Promise<void>;
  /**
   * Checks a TOTP code or a recovery code for an account whose factor is on,
   * writing nothing; throws `h.bad-second-factor` (or `h.user-disabled`).
   */
  check(userId: bigint, code: string): Promise<CheckedCode>;
  /** Spends a checked code in `q`; throws `h.bad-second-factor` when it was used meanwhile. */
  spend(q: Queryable, userId: bigint, checked: CheckedCode): Promise<void>;
  /**
   * For an account-service call that adds a way in, on an account with TOTP
   * on: checks the password and `code` as one attempt on the login schedule
   * (the count is reset only once the code is right, as for a login), and
   * spends the code. Resolves false, checking nothing, when TOTP is off.
   */
  stepUp(userId: bigint, password: string, code: string, caller: Caller): Promise<boolean>;
}

/** What `begin` needs of the calling session. */
export interface ReauthProof {
  readonly userId: bigint;
  /** When the session signed in. */
  readonly createdAt: number;
}

export type SecondFactorDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: SecondFactorStore;
  /** The server secret `second-factor` (src/server-secrets.ts): keys are derived from it. */
  readonly secret: Buffer;
  /** The issuer authenticator apps show (TOTP_ISSUER). */
  readonly issuer: string;
  /** REAUTH_WINDOW: how long after signing in a session may begin enrolment alone. */
  readonly reauthWindowMs: number;
  readonly accounts: Pick<Accounts, "ownerOf" | "verifyPassword">;
  readonly events: Pick<AccountEvents, "record">;
  readonly limits: Pick<Limits, "loginAttempt" | "loginSucceeded">;
  readonly audit: Audit;
};

const derive = (secret: Buffer, info: string): Buffer =>
  Buffer.from(hkdfSync("sha256", secret, "", info, 32));

/** A fresh recovery code, as shown: `XXXX-XXXX-XXXX-XXXX`. */
function newRecoveryCode(): string {
  let code = "";
  for (let i = 0; i < RECOVERY_CODE_CHARS; i++) {
    code += CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  }
  return code.match(/.{4}/g)?.join("-") ?? code;
}

export function createSecondFactor(deps: SecondFactorDeps): SecondFactor {
  const { db, clock, store, accounts, events, limits, audit } = deps;
  // Secrets are sealed as the signing key is (AES-256-GCM, nonce || body ||
  // tag, src/federation/server-keys.ts), under a key derived from a server
  // secret that KEY_ENCRYPTION_KEY encrypts in turn: setting that key later
  // protects every stored TOTP secret at once, without rewriting a row.
  const sealKey = derive(deps.secret, "cadenza/totp-secret/v1");
  // Recovery codes carry 80 bits from the CSPRNG, so a fast keyed hash is
  // enough: argon2id's cost protects low-entropy passwords, and no amount of
  // hashing speed makes 2^80 guesses feasible, even for someone holding the
  // key. Keyed, a copy of the database alone cannot test a guess at all.
  // Codes are looked up by their exact HMAC, so the lookup's timing depends
  // only on a value an attacker cannot steer towards a stored one.
  const macKey = derive(deps.secret, "cadenza/recovery-code/v1");

  const aad = (userId: bigint) => Buffer.from(`cadenza/totp/${userId}`);
  const seal = (userId: bigint, secret: Uint8Array) => encryptSeed(sealKey, secret, aad(userId));
  const open = (userId: bigint, sealed: Uint8Array) => decryptSeed(sealKey, sealed, aad(userId));
  const recoveryHmac = (userId: bigint, code: string): Buffer =>
    createHmac("sha256", macKey)
      .update(`${userId}\n${normalizeCode(code)}`)
      .digest();

  const bad = (): never => {
    throw new HarmonyError(authErrors.badSecondFactor);
  };

  /** The time step `code` belongs to (±1 step of now), or undefined. */
  const stepOf = (userId: bigint, stored: StoredTotp, code: string): number | undefined => {
    const secret = new Secret({ buffer: Uint8Array.from(open(userId, stored.secret)).buffer });
    const timestamp = clock.now();
    const token = code.replace(/[\s-]/g, "");
    const delta = TOTP.validate({ token, secret, ...TOTP_PARAMS, timestamp, window: SKEW_STEPS });
    return delta === null
      ? undefined
      : TOTP.counter({ period: TOTP_PARAMS.period, timestamp }) + delta;
  };

  const newRecoveryCodes = (userId: bigint) => {
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, newRecoveryCode);
    return { codes, hmacs: codes.map((c) => recoveryHmac(userId, c)) };
  };

  /** A local account's email (for the URI) and throttle key (as its login's), or `h.not-local-user`. */
  const localOwner = async (userId: bigint) => {
    const owner = await accounts.ownerOf(userId);
    if (!owner) {
      throw new HarmonyError(adminErrors.notLocal, {
        message: "you log in through your own homeserver: a second factor is set there",
      });
    }
    return { email: owner.email, throttleKey: sha256(emailKey(owner.email)) };
  };

  const enabledFactor = async (userId: bigint): Promise<StoredTotp> => {
    const stored = await store.find(db, userId);
    if (stored?.enabledAt === undefined) throw new HarmonyError(secondFactorErrors.notEnabled);
    return stored;
  };

  async function check(userId: bigint, code: string): Promise<CheckedCode> {
    const stored = await store.find(db, userId);
    if (stored?.enabledAt === undefined) return bad();
    if (stored.userDisabled) throw new HarmonyError(authErrors.userDisabled);
    if (/^\d{6}$/.test(code.replace(/[\s-]/g, ""))) {
      const step = stepOf(userId, stored, code);
      if (step === undefined) return bad();
      // Equal is a replay; earlier is a code older than one already used.
      if (step <= stored.lastStep) throw new HarmonyError(authErrors.secondFactorReplayed);
      return { kind: "totp", step };
    }
    if (new RegExp(`^[${CODE_ALPHABET}]{${RECOVERY_CODE_CHARS}}$`).test(normalizeCode(code))) {
      const hmac = recoveryHmac(userId, code);
      if (await store.hasRecoveryCode(db, userId, hmac)) return { kind: "recovery", hmac };
    }
    return bad();
  }

  async function spend(q: Queryable, userId: bigint, checked: CheckedCode): Promise<void> {
    if (checked.kind === "totp") {
      if (!(await store.useStep(q, userId, checked.step))) {
        throw new HarmonyError(authErrors.secondFactorReplayed);
      }
    } else if (!(await store.spendRecoveryCode(q, userId, checked.hmac))) {
      bad();
    }
  }

  /**
   * Checks `code` (and `password`, when given) for an account-service call,
   * counting the attempt on the login schedule like a login's, so a stolen
   * session cannot guess codes or passwords faster than a login could.
   */
  async function verifyAll(
    userId: bigint,
    code: string,
    password: string | undefined,
    caller: Caller,
  ): Promise<{ checked: CheckedCode; throttleKey: Buffer }> {
    await enabledFactor(userId);
    const { throttleKey } = await localOwner(userId);
    await limits.loginAttempt(throttleKey, caller);
    if (password !== undefined && !(await accounts.verifyPassword(userId, password))) {
      audit.record("totp.refused", { caller, userId, reason: "bad-password" });
      throw new HarmonyError(authErrors.badCredentials, { message: "wrong password" });
    }
    const checked = await check(userId, code).catch((err: unknown) => {
      audit.record("totp.refused", { caller, userId, reason: "bad-second-factor" });
      throw err;
    });
    return { checked, throttleKey };
  }

  return {
    async status(userId) {
      const stored = await store.find(db, userId);
      const enabled = stored?.enabledAt !== undefined;
      return {
        enabled,
        enabledAt: stored?.enabledAt,
        pending: stored !== undefined && !enabled,
        recoveryCodesLeft: enabled ? await store.recoveryCodesLeft(db, userId) : 0,
      };
    },

    async enabled(userId) {
      return (await store.find(db, userId))?.enabledAt !== undefined;
    },

    async begin(session, password, caller) {
      const { userId } = session;
      const owner = await localOwner(userId);
      // Before the password: a right one must not reset the count of an
      // account whose codes are still to be guessed (RegenerateRecoveryCodes).
      if ((await store.find(db, userId))?.enabledAt !== undefined) {
        throw new HarmonyError(secondFactorErrors.alreadyEnabled);
      }
      if (password !== "") {
        await limits.loginAttempt(owner.throttleKey, caller);
        if (!(await accounts.verifyPassword(userId, password))) {
          audit.record("totp.refused", { caller, userId, reason: "bad-password" });
          throw new HarmonyError(authErrors.badCredentials, { message: "wrong password" });
        }
        await limits.loginSucceeded(owner.throttleKey);
      } else if (clock.now() - session.createdAt > deps.reauthWindowMs) {
        audit.record("totp.refused", { caller, userId, reason: "password-needed" });
        throw new HarmonyError(secondFactorErrors.passwordNeeded);
      }
      const raw = randomBytes(SECRET_BYTES);
      if (!(await store.putPending(db, userId, seal(userId, raw), clock.now()))) {
        throw new HarmonyError(secondFactorErrors.alreadyEnabled);
      }
      const totp = new TOTP({
        issuer: deps.issuer,
        label: owner.email,
        secret: new Secret({ buffer: Uint8Array.from(raw).buffer }),
        ...TOTP_PARAMS,
      });
      const uri = totp.toString();
      audit.record("totp.enrollment.begun", { caller, userId });
      return {
        secret: totp.secret.base32,
        uri,
        qrCodeSvg: await qrCode(uri, { type: "svg", errorCorrectionLevel: "M", margin: 4 }),
      };
    },

    async confirm(userId, code, caller) {
      const stored = await store.find(db, userId);
      if (stored === undefined) throw new HarmonyError(secondFactorErrors.notEnrolling);
      if (stored.enabledAt !== undefined) throw new HarmonyError(secondFactorErrors.alreadyEnabled);
      const step = stepOf(userId, stored, code);
      if (step === undefined) throw new HarmonyError(authErrors.badSecondFactor);
      const { codes, hmacs } = newRecoveryCodes(userId);
      await db.transaction(async (tx) => {
        // Accepting the step here means the confirming code cannot log in too.
        if (!(await store.enable(tx, userId, step, clock.now()))) {
          throw new HarmonyError(secondFactorErrors.notEnrolling);
        }
        await store.replaceRecoveryCodes(tx, userId, hmacs);
        await events.record(tx, userId, {
          kind: "second_factor_changed",
          enabled: true,
          byOperator: false,
        });
      });
      audit.record("totp.enabled", { caller, userId });
      return codes;
    },

    async regenerateRecoveryCodes(userId, code, caller) {
      const { checked, throttleKey } = await verifyAll(userId, code, undefined, caller);
      const { codes, hmacs } = newRecoveryCodes(userId);
      await db.transaction(async (tx) => {
        await spend(tx, userId, checked);
        await store.replaceRecoveryCodes(tx, userId, hmacs);
      });
      await limits.loginSucceeded(throttleKey);
      audit.record("totp.recovery_codes.regenerated", { caller, userId });
      return codes;
    },

    async disable(userId, code, password, caller) {
      const { checked, throttleKey } = await verifyAll(userId, code, password, caller);
      await db.transaction(async (tx) => {
        await spend(tx, userId, checked);
        if (await store.remove(tx, userId)) {
          await events.record(tx, userId, {
            kind: "second_factor_changed",
            enabled: false,
            byOperator: false,
          });
        }
      });
      await limits.loginSucceeded(throttleKey);
      audit.record("totp.disabled", { caller, userId });
    },

    check,
    spend,

    async stepUp(userId, password, code, caller) {
      if ((await store.find(db, userId))?.enabledAt === undefined) return false;
      if (code.trim() === "") {
        throw new HarmonyError(authErrors.badSecondFactor, {
          message:
            "TOTP is on for this account: send a current code from the authenticator app (or a recovery code) as well",
        });
      }
      const { checked, throttleKey } = await verifyAll(userId, code, password, caller);
      await db.transaction((tx) => spend(tx, userId, checked));
      await limits.loginSucceeded(throttleKey);
      if (checked.kind === "recovery") audit.record("recovery_code.used", { caller, userId });
      return true;
    },
  };
}
