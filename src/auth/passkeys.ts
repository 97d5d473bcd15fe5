import { createHmac, hkdfSync } from "node:crypto";
import { Code } from "@connectrpc/connect";
import {
  type AuthenticationResponseJSON,
  generateAuthenticationOptions,
  generateRegistrationOptions,
  type RegistrationResponseJSON,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
} from "@simplewebauthn/server";
import {
  decodeClientDataJSON,
  isoBase64URL,
  parseAuthenticatorData,
} from "@simplewebauthn/server/helpers";
import type { Audit } from "../audit.js";
import type { Caller } from "../caller.js";
import type { Clock } from "../clock.js";
import type { PasskeyConfig } from "../config.js";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";
import type { AccountEvents } from "../events/account-events.js";
import type { Limits } from "../limits/limits.js";
import { adminErrors } from "./account-admin.js";
import { emailKey } from "./account-rules.js";
import type { Accounts } from "./accounts.js";
import { authErrors } from "./auth-errors.js";
import { sha256 } from "./random-ids.js";
import type { SecondFactor } from "./second-factor.js";

/**
 * Passkeys (WebAuthn), verified by @simplewebauthn/server: a way to sign in
 * without the password for clients that announce support (the reference web
 * client), and their registration through the account service. Every
 * ceremony's challenge is stored in Postgres and used once: the answer that
 * uses it deletes it first, whether it verifies or not, so an assertion
 * replayed (on any replica) finds no challenge. A sign-in's challenge is
 * bound to its auth flow and expires with it; a registration's to the session
 * that asked for it. User verification (a PIN or biometric on the
 * authenticator) is required in both, which is what lets a passkey sign-in
 * stand in for the password and a second factor together.
 */

/** The client feature a BeginAuth announces (header `cadenza-client-features`). */
export const PASSKEY_FEATURE = "passkey";
/** How long the browser gives the user for a ceremony. */
const CEREMONY_TIMEOUT_MS = 120_000;
/** A registration's challenge lasts a little longer than its ceremony. */
const REGISTRATION_TTL_MS = 5 * 60_000;
/** Passkeys one account may have: storage stays bounded, and no real user needs more. */
export const MAX_PASSKEYS_PER_USER = 25;
const MAX_NAME_LENGTH = 64;

export const passkeyErrors = {
  /**
   * cadenza's own: a passkey sign-in that does not verify, for whatever
   * reason (no challenge or a used one, an unknown credential, another
   * origin, a bad signature, no user verification, a counter that went
   * back). One answer for all, as a wrong password has; the audit line says
   * which.
   */
  badPasskey: {
    identifier: "h.bad-passkey",
    code: Code.Unauthenticated,
    message:
      "this passkey was not accepted: try again, or go back and log in with your email and password",
  },
  /** cadenza's own. */
  noPasskeyStep: {
    identifier: "h.no-passkey-step",
    code: Code.FailedPrecondition,
    message:
      "this auth flow is not on its passkey step: choose the option passkey on the initial step first",
  },
  /** cadenza's own. */
  notRegistering: {
    identifier: "h.passkey-not-registering",
    code: Code.FailedPrecondition,
    message:
      "no passkey registration is waiting for this session (none was begun, it was used, or it expired): call BeginPasskeyRegistration again",
  },
  /** cadenza's own. */
  badRegistration: {
    identifier: "h.bad-passkey-registration",
    code: Code.InvalidArgument,
    message:
      "the browser's answer did not verify as a registration of a passkey for this server: call BeginPasskeyRegistration and try again",
  },
  /** cadenza's own. */
  alreadyRegistered: {
    identifier: "h.passkey-already-registered",
    code: Code.AlreadyExists,
    message: "this passkey is already registered",
  },
  /** cadenza's own. */
  tooManyPasskeys: {
    identifier: "h.too-many-passkeys",
    code: Code.FailedPrecondition,
    message: `an account can have at most ${MAX_PASSKEYS_PER_USER} passkeys: remove one first`,
  },
  /** cadenza's own. */
  invalidName: {
    identifier: "h.invalid-passkey-name",
    code: Code.InvalidArgument,
    message: `a passkey's name is at most ${MAX_NAME_LENGTH} characters, without control characters`,
  },
  /** cadenza's own. */
  unknownPasskey: {
    identifier: "h.unknown-passkey",
    code: Code.NotFound,
    message: "there is no passkey with that ID on this account; ListPasskeys names them",
  },
} as const satisfies Record<string, ErrorSpec>;

export type PasskeyDeviceType = "singleDevice" | "multiDevice";

/** A passkey as stored (migration 0009). */
export interface StoredPasskey {
  readonly credentialId: Uint8Array;
  readonly userId: bigint;
  /** COSE, as the authenticator gave it. */
  readonly publicKey: Uint8Array;
  readonly signCount: number;
  readonly transports: readonly string[];
  readonly deviceType: PasskeyDeviceType;
  readonly backedUp: boolean;
  readonly aaguid: string;
  readonly name: string;
  readonly createdAt: number;
  readonly lastUsedAt: number | undefined;
}

export type ChallengePurpose = "sign-in" | "registration";

export interface PasskeyStore {
  /** Inserts a passkey; false when its credential ID is registered already (to anyone). */
  insert(q: Queryable, passkey: StoredPasskey): Promise<boolean>;
  /** A passkey by credential ID, with whether its user is disabled. */
  find(
    q: Queryable,
    credentialId: Uint8Array,
  ): Promise<(StoredPasskey & { readonly userDisabled: boolean }) | undefined>;
  /** The user's passkeys, newest first. */
  list(q: Queryable, userId: bigint): Promise<StoredPasskey[]>;
  count(q: Queryable, userId: bigint): Promise<number>;
  /**
   * Records a sign-in: the counter moves to `signCount` only forward (or
   * stays 0 for authenticators without one), decided in the statement, so
   * of two uses of a cloned authenticator's counter only one passes. False
   * when it did not move (or the passkey is gone).
   */
  recordUse(
    q: Queryable,
    credentialId: Uint8Array,
    signCount: number,
    backedUp: boolean,
    now: number,
  ): Promise<boolean>;
  /** Deletes the user's passkeys with these IDs (all when undefined); returns those deleted. */
  delete(
    q: Queryable,
    userId: bigint,
    credentialIds: readonly Uint8Array[] | undefined,
  ): Promise<Uint8Array[]>;
  /** Stores a ceremony's challenge, replacing the subject's earlier one. */
  putChallenge(
    q: Queryable,
    purpose: ChallengePurpose,
    subject: string,
    challenge: string,
    userId: bigint | null,
    expiresAt: number,
  ): Promise<void>;
  /** Deletes and returns the subject's unexpired challenge: each is used once. */
  takeChallenge(
    q: Queryable,
    purpose: ChallengePurpose,
    subject: string,
    now: number,
  ): Promise<{ challenge: string; userId: bigint | null } | undefined>;
  deleteExpiredChallenges(q: Queryable, now: number): Promise<number>;
}

/** A passkey as its owner and operators see it. */
export interface PasskeyInfo {
  /** The credential ID, base64url: the passkey's ID in every API. */
  readonly passkeyId: string;
  readonly name: string;
  readonly createdAt: number;
  readonly lastUsedAt: number | undefined;
  /** Whether the credential is synced (backed up) beyond the one device. */
  readonly backedUp: boolean;
  readonly deviceType: PasskeyDeviceType;
}

/** A sign-in assertion that verified; record it in the transaction that makes the session. */
export interface VerifiedSignIn {
  readonly userId: bigint;
  readonly credentialId: Uint8Array;
  readonly signCount: number;
  readonly backedUp: boolean;
}

export interface Passkeys {
  /** Whether passkeys are configured at all (PASSKEYS=on with an RP ID). */
  readonly enabled: boolean;
  /**
   * Whether a BeginAuth is offered the passkey option: the client announced
   * the feature, from an origin in WEBAUTHN_ORIGINS (where its passkeys
   * can work at all). Generic Harmony clients announce nothing.
   */
  offeredTo(client: {
    readonly features: readonly string[];
    readonly origin: string | undefined;
  }): boolean;
  /** Fresh options (a new challenge, replacing any earlier one) for a flow's passkey step. */
  signInOptions(flowKey: Buffer, flowExpiresAt: number): Promise<string>;
  /**
   * Checks an assertion (AuthenticationResponseJSON) against the flow's
   * challenge, spending the challenge; throws `h.bad-passkey` (or
   * `h.user-disabled`, said only after a valid assertion).
   */
  verifySignIn(flowKey: Buffer, responseJson: string, caller: Caller): Promise<VerifiedSignIn>;
  /** Moves the passkey's counter and last use, in the session's transaction; `h.bad-passkey` when it raced. */
  recordSignIn(q: Queryable, verified: VerifiedSignIn): Promise<void>;
  /**
   * Checks the password (and, when TOTP is on, spends `code`), then answers
   * creation options for the caller's session.
   */
  beginRegistration(
    userId: bigint,
    sessionId: string,
    password: string,
    code: string,
    caller: Caller,
  ): Promise<string>;
  /** Verifies the browser's attestation (RegistrationResponseJSON) and stores the passkey. */
  finishRegistration(
    userId: bigint,
    sessionId: string,
    responseJson: string,
    name: string,
    caller: Caller,
  ): Promise<PasskeyInfo>;
  list(userId: bigint): Promise<PasskeyInfo[]>;
  /** Removes one of the user's passkeys (the user's own call). */
  remove(userId: bigint, passkeyId: string, caller: Caller): Promise<void>;
  /** Removes the listed passkeys of a user, or all of them (an operator's call); returns those removed. */
  removeByOperator(userId: bigint, passkeyIds: readonly string[] | undefined): Promise<string[]>;
  /** Deletes expired challenges; returns how many. */
  sweep(): Promise<number>;
}

export type PasskeysDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: PasskeyStore;
  /** undefined: passkeys are off, and nothing is offered. */
  readonly config: PasskeyConfig | undefined;
  /** A server secret the user handles are derived from (the `second-factor` one). */
  readonly secret: Buffer;
  readonly accounts: Pick<Accounts, "ownerOf" | "verifyPassword">;
  readonly events: Pick<AccountEvents, "record">;
  readonly limits: Pick<Limits, "loginAttempt" | "loginSucceeded">;
  /** A passkey signs in without the second factor, so adding one needs it. */
  readonly secondFactor: Pick<SecondFactor, "stepUp">;
  readonly audit: Audit;
  readonly logger: { debug(obj: object, msg: string): void };
};

const toId = (bytes: Uint8Array): string => isoBase64URL.fromBuffer(Uint8Array.from(bytes));

/** A base64url ID as bytes, or undefined when it is none. */
function fromId(id: string): Uint8Array | undefined {
  if (id === "" || id.length > 1400 || !isoBase64URL.isBase64URL(id)) return undefined;
  const bytes = isoBase64URL.toBuffer(id);
  return bytes.length > 0 && bytes.length <= 1023 ? bytes : undefined;
}

const info = (p: StoredPasskey): PasskeyInfo => ({
  passkeyId: toId(p.credentialId),
  name: p.name,
  createdAt: p.createdAt,
  lastUsedAt: p.lastUsedAt,
  backedUp: p.backedUp,
  deviceType: p.deviceType,
});

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** The JSON a browser's credential serialises to, as far as its shape goes. */
function parseCredential(
  json: string,
  fields: readonly string[],
): Record<string, unknown> | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!isRecord(parsed) || typeof parsed.id !== "string" || typeof parsed.rawId !== "string") {
    return undefined;
  }
  if (parsed.type !== "public-key" || !isRecord(parsed.response)) return undefined;
  const response = parsed.response;
  if (!fields.every((f) => typeof response[f] === "string")) return undefined;
  return parsed;
}

export function createPasskeys(deps: PasskeysDeps): Passkeys {
  const { db, clock, store, config, accounts, events, limits, audit } = deps;
  const handleKey = Buffer.from(
    hkdfSync("sha256", deps.secret, "", "cadenza/passkey-user-handle/v1", 32),
  );
  /**
   * The WebAuthn user handle: stable per account (so an authenticator keeps
   * one passkey per account and site), no personal data, derived rather than
   * stored.
   */
  const userHandle = (userId: bigint): Uint8Array =>
    createHmac("sha256", handleKey).update(`${userId}`).digest();

  const need = (): PasskeyConfig => {
    if (!config)
      throw new HarmonyError(passkeyErrors.noPasskeyStep, {
        message: "passkeys are off on this server (PASSKEYS)",
      });
    return config;
  };

  /** A local account (passkeys are for this homeserver's own users), or `h.not-local-user`. */
  const localOwner = async (userId: bigint) => {
    const owner = await accounts.ownerOf(userId);
    if (!owner) {
      throw new HarmonyError(adminErrors.notLocal, {
        message: "you log in through your own homeserver: passkeys are set there",
      });
    }
    return owner;
  };

  const countAfter = async (q: Queryable, userId: bigint) => store.count(q, userId);

  async function verifySignIn(flowKey: Buffer, responseJson: string, caller: Caller) {
    const { rpId, origins } = need();
    const refuse = (reason: string, detail?: unknown): never => {
      if (detail !== undefined)
        deps.logger.debug({ reason, detail: String(detail) }, "passkey refused");
      audit.record("login.failed", { caller, flowKey, reason: `passkey-${reason}` });
      throw new HarmonyError(passkeyErrors.badPasskey);
    };
    const parsed = parseCredential(responseJson, [
      "clientDataJSON",
      "authenticatorData",
      "signature",
    ]);
    if (!parsed) {
      throw new HarmonyError(authErrors.missingForm, {
        message:
          "field 1 (assertion) must be the JSON of the browser's WebAuthn assertion (AuthenticationResponseJSON), as UTF-8 bytes",
      });
    }
    const response = parsed as unknown as AuthenticationResponseJSON;
    // Taken first: whatever happens next, this challenge never verifies again.
    const taken = await store.takeChallenge(db, "sign-in", flowKey.toString("hex"), clock.now());
    if (!taken) return refuse("no-challenge");
    const credentialId = fromId(response.id);
    const passkey = credentialId && (await store.find(db, credentialId));
    if (!passkey) return refuse("unknown-credential");
    // What the browser signed, read for the audit line's reason; the
    // library verifies all of it (and the signature) below.
    let counter: number;
    try {
      const client = decodeClientDataJSON(response.response.clientDataJSON);
      if (client.challenge !== taken.challenge) return refuse("bad-challenge");
      if (!origins.includes(client.origin)) return refuse("bad-origin", client.origin);
      const authData = Uint8Array.from(isoBase64URL.toBuffer(response.response.authenticatorData));
      counter = parseAuthenticatorData(authData).counter ?? 0;
    } catch (err) {
      if (err instanceof HarmonyError) throw err;
      return refuse("malformed", (err as Error).message);
    }
    if ((counter > 0 || passkey.signCount > 0) && counter <= passkey.signCount) {
      return refuse("counter");
    }
    const handle = response.response.userHandle;
    if (handle !== undefined && handle !== toId(userHandle(passkey.userId))) {
      return refuse("user-handle");
    }
    const verification = await verifyAuthenticationResponse({
      response,
      expectedChallenge: taken.challenge,
      expectedOrigin: [...origins],
      expectedRPID: rpId,
      credential: {
        id: toId(passkey.credentialId),
        publicKey: Uint8Array.from(passkey.publicKey),
        counter: passkey.signCount,
        transports: [...passkey.transports],
      },
      requireUserVerification: true,
    }).catch((err: unknown) => refuse("not-verified", (err as Error).message));
    if (!verification.verified) return refuse("not-verified");
    if (passkey.userDisabled) {
      audit.record("login.failed", { caller, flowKey, userId: passkey.userId, reason: "disabled" });
      throw new HarmonyError(authErrors.userDisabled);
    }
    return {
      userId: passkey.userId,
      credentialId: passkey.credentialId,
      signCount: verification.authenticationInfo.newCounter,
      backedUp: verification.authenticationInfo.credentialBackedUp,
    };
  }

  return {
    enabled: config !== undefined,

    offeredTo({ features, origin }) {
      return (
        config !== undefined &&
        features.includes(PASSKEY_FEATURE) &&
        origin !== undefined &&
        config.origins.includes(origin)
      );
    },

    async signInOptions(flowKey, flowExpiresAt) {
      const { rpId } = need();
      // Discoverable credentials: no allowCredentials, so no email is asked
      // for and none is disclosed; the authenticator offers its passkeys.
      const options = await generateAuthenticationOptions({
        rpID: rpId,
        timeout: CEREMONY_TIMEOUT_MS,
        userVerification: "required",
      });
      await store.putChallenge(
        db,
        "sign-in",
        flowKey.toString("hex"),
        options.challenge,
        null,
        flowExpiresAt,
      );
      return JSON.stringify(options);
    },

    verifySignIn,

    async recordSignIn(q, verified) {
      const moved = await store.recordUse(
        q,
        verified.credentialId,
        verified.signCount,
        verified.backedUp,
        clock.now(),
      );
      if (!moved) throw new HarmonyError(passkeyErrors.badPasskey);
    },

    async beginRegistration(userId, sessionId, password, code, caller) {
      const { rpId } = need();
      const owner = await localOwner(userId);
      const existing = await store.list(db, userId);
      if (existing.length >= MAX_PASSKEYS_PER_USER) {
        throw new HarmonyError(passkeyErrors.tooManyPasskeys);
      }
      // The password again, counted on the login schedule: a session alone
      // (stolen, or left open) must not be able to add a way in that
      // outlives it. With TOTP on, a code too (a passkey signs in without
      // it), checked with the password as one attempt (second-factor.ts).
      const refused = (err: unknown): never => {
        // A throttled call is logged as such (login.throttled) by the limits.
        if (err instanceof HarmonyError && err.spec.code === Code.Unauthenticated) {
          const reason =
            err.spec === authErrors.badCredentials ? "bad-password" : "bad-second-factor";
          audit.record("passkey.refused", { caller, userId, reason });
        }
        throw err;
      };
      const stepped = await deps.secondFactor.stepUp(userId, password, code, caller).catch(refused);
      if (!stepped) {
        const throttleKey = sha256(emailKey(owner.email));
        await limits.loginAttempt(throttleKey, caller);
        if (!(await accounts.verifyPassword(userId, password))) {
          refused(new HarmonyError(authErrors.badCredentials, { message: "wrong password" }));
        }
        await limits.loginSucceeded(throttleKey);
      }
      const options = await generateRegistrationOptions({
        rpName: rpId,
        rpID: rpId,
        userName: owner.email,
        userDisplayName: owner.username,
        userID: Uint8Array.from(userHandle(userId)),
        timeout: CEREMONY_TIMEOUT_MS,
        attestationType: "none",
        // The authenticator refuses to make a second passkey for this account.
        excludeCredentials: existing.map((p) => ({
          id: toId(p.credentialId),
          transports: [...p.transports],
        })),
        authenticatorSelection: { residentKey: "required", userVerification: "required" },
      });
      await store.putChallenge(
        db,
        "registration",
        sessionId,
        options.challenge,
        userId,
        clock.now() + REGISTRATION_TTL_MS,
      );
      audit.record("passkey.registration.begun", { caller, userId });
      return JSON.stringify(options);
    },

    async finishRegistration(userId, sessionId, responseJson, name, caller) {
      const { rpId, origins } = need();
      const trimmed = name.trim();
      if (trimmed.length > MAX_NAME_LENGTH || /\p{Cc}/u.test(trimmed)) {
        throw new HarmonyError(passkeyErrors.invalidName);
      }
      const parsed = parseCredential(responseJson, ["clientDataJSON", "attestationObject"]);
      if (!parsed) {
        throw new HarmonyError(passkeyErrors.badRegistration, {
          message:
            "response_json must be the JSON of the browser's new credential (RegistrationResponseJSON)",
        });
      }
      const taken = await store.takeChallenge(db, "registration", sessionId, clock.now());
      if (!taken || taken.userId !== userId) throw new HarmonyError(passkeyErrors.notRegistering);
      const refused = (why: string): never => {
        audit.record("passkey.refused", { caller, userId, reason: "not-verified" });
        throw new HarmonyError(passkeyErrors.badRegistration, {
          message: `${passkeyErrors.badRegistration.message} (${why})`,
        });
      };
      const verification = await verifyRegistrationResponse({
        response: parsed as unknown as RegistrationResponseJSON,
        expectedChallenge: taken.challenge,
        expectedOrigin: [...origins],
        expectedRPID: rpId,
        requireUserVerification: true,
      }).catch((err: unknown) => refused((err as Error).message));
      if (!verification.verified) return refused("it did not verify");
      const { credential, credentialDeviceType, credentialBackedUp, aaguid } =
        verification.registrationInfo;
      const passkey: StoredPasskey = {
        credentialId: Uint8Array.from(isoBase64URL.toBuffer(credential.id)),
        userId,
        publicKey: credential.publicKey,
        signCount: credential.counter,
        transports: (credential.transports ?? []).filter((t) => /^[a-z-]{1,32}$/.test(t)),
        deviceType: credentialDeviceType,
        backedUp: credentialBackedUp,
        aaguid,
        name: trimmed === "" ? "Passkey" : trimmed,
        createdAt: clock.now(),
        lastUsedAt: undefined,
      };
      await db.transaction(async (tx) => {
        if ((await store.count(tx, userId)) >= MAX_PASSKEYS_PER_USER) {
          throw new HarmonyError(passkeyErrors.tooManyPasskeys);
        }
        if (!(await store.insert(tx, passkey))) {
          throw new HarmonyError(passkeyErrors.alreadyRegistered);
        }
        await events.record(tx, userId, {
          kind: "passkeys_changed",
          added: true,
          passkeys: await countAfter(tx, userId),
          byOperator: false,
        });
      });
      audit.record("passkey.added", { caller, userId });
      return info(passkey);
    },

    async list(userId) {
      return (await store.list(db, userId)).map(info);
    },

    async remove(userId, passkeyId, caller) {
      const id = fromId(passkeyId);
      await db.transaction(async (tx) => {
        const gone = id ? await store.delete(tx, userId, [id]) : [];
        if (gone.length === 0) throw new HarmonyError(passkeyErrors.unknownPasskey);
        await events.record(tx, userId, {
          kind: "passkeys_changed",
          added: false,
          passkeys: await countAfter(tx, userId),
          byOperator: false,
        });
      });
      audit.record("passkey.removed", { caller, userId });
    },

    async removeByOperator(userId, passkeyIds) {
      const ids = passkeyIds?.map((p) => {
        const id = fromId(p);
        if (!id) {
          throw new HarmonyError(passkeyErrors.unknownPasskey, {
            message: `${p} is not a passkey ID (base64url, as ListPasskeys answers them)`,
          });
        }
        return id;
      });
      const gone = await db.transaction(async (tx) => {
        const deleted = await store.delete(tx, userId, ids);
        if (deleted.length > 0) {
          await events.record(tx, userId, {
            kind: "passkeys_changed",
            added: false,
            passkeys: await countAfter(tx, userId),
            byOperator: true,
          });
        }
        return deleted;
      });
      if (gone.length > 0) audit.record("admin.passkeys.removed", { userId });
      return gone.map(toId);
    },

    sweep() {
      return store.deleteExpiredChallenges(db, clock.now());
    },
  };
}
