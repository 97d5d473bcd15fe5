import type { Clock } from "../clock.js";
import type { Queryable } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import {
  emailKey,
  normalizePassword,
  validateEmail,
  validateNewPassword,
  validateUsername,
} from "./account-rules.js";
import { authErrors } from "./auth-errors.js";
import type { PasswordHasher } from "./password-hasher.js";
import { randomUserId } from "./random-ids.js";
import type { UserStore } from "./stores.js";

/** A login whose password matched, ready to be turned into a session. */
export interface VerifiedLogin {
  readonly userId: bigint;
  /** A hash with current parameters to store in place of `from`, when the old one is outdated. */
  readonly rehash?: { readonly from: string; readonly to: string };
}

/** A registration that passed every rule and whose password is hashed. */
export interface PreparedRegistration {
  readonly email: string;
  readonly emailKey: string;
  readonly username: string;
  readonly usernameKey: string;
  readonly passwordHash: string;
}

export interface Accounts {
  /**
   * Checks an email and password. Unknown email, an account without a password
   * and a wrong password all fail alike (`h.bad-password\nh.bad-email`), after
   * one argon2id verification each.
   */
  verifyLogin(email: string, password: string): Promise<VerifiedLogin>;
  /**
   * Whether `password` is the password of the local account `userId` (one
   * argon2id verification, against a dummy hash when it has none).
   */
  verifyPassword(userId: bigint, password: string): Promise<boolean>;
  /** Stores an outdated hash's replacement, inside the login's transaction. */
  finishLogin(q: Queryable, login: VerifiedLogin): Promise<void>;
  /**
   * Validates a registration and hashes its password; nothing is written.
   * With `emailPrivate` (EMAIL_VERIFICATION=required), a taken email is not
   * refused but said in `emailTaken`, for the mailbox alone to hear of.
   */
  prepareRegistration(
    input: { email: string; username: string; password: string },
    options?: { readonly emailPrivate?: boolean },
  ): Promise<PreparedRegistration & { readonly emailTaken: boolean }>;
  /**
   * Creates the account inside the caller's transaction; throws
   * `h.already-registered` when the email or username was taken meanwhile.
   */
  createAccount(q: Queryable, prepared: PreparedRegistration): Promise<bigint>;
  /** A local account's email and username, for the rules of a new password. */
  ownerOf(userId: bigint): Promise<{ email: string; username: string } | undefined>;
  /** The local account with this email, if any (for codes sent by email). */
  findLocal(
    email: string,
  ): Promise<{ userId: bigint; email: string; username: string } | undefined>;
  /** Checks a new password against the rules and the account's own email and name; hashes it. */
  prepareNewPassword(
    password: string,
    owner: { readonly email: string; readonly username: string },
  ): Promise<string>;
  /** Stores a new password hash, inside the caller's transaction. */
  setPassword(q: Queryable, userId: bigint, hash: string): Promise<void>;
  /** How many times the account's password was set (see UserStore.credentialEpoch). */
  credentialEpoch(q: Queryable, userId: bigint, lock?: boolean): Promise<number | undefined>;
}

export type AccountsDeps = {
  readonly db: Queryable;
  readonly clock: Clock;
  readonly hasher: PasswordHasher;
  readonly commonPasswords: ReadonlySet<string>;
  readonly userStore: UserStore;
};

export async function createAccounts(deps: AccountsDeps): Promise<Accounts> {
  const { db, clock, hasher, commonPasswords, userStore } = deps;
  // Verified in place of a missing account's hash, so an unknown email costs
  // the same argon2id work as a wrong password.
  const dummyHash = await hasher.hash(`cadenza-dummy-${randomUserId()}`);

  const alreadyRegistered = (what: "email" | "username"): HarmonyError =>
    new HarmonyError(authErrors.alreadyRegistered, {
      message:
        what === "email"
          ? "an account with this email already exists; log in instead"
          : "this username is taken; choose another",
    });

  return {
    async verifyLogin(email, password) {
      const user = await userStore.findByEmailKey(db, emailKey(email));
      const hash = user?.passwordHash ?? dummyHash;
      const ok = await hasher.verify(hash, normalizePassword(password));
      if (!ok || !user || user.passwordHash === null) {
        throw new HarmonyError(authErrors.badCredentials);
      }
      // Only someone who knows the password learns that the account is disabled.
      if (user.disabled) throw new HarmonyError(authErrors.userDisabled);
      if (!hasher.needsRehash(hash)) return { userId: user.id };
      return {
        userId: user.id,
        rehash: { from: hash, to: await hasher.hash(normalizePassword(password)) },
      };
    },

    async verifyPassword(userId, password) {
      const user = await userStore.findById(db, userId);
      const hash = user?.passwordHash ?? dummyHash;
      const ok = await hasher.verify(hash, normalizePassword(password));
      return ok && user !== undefined && user.passwordHash !== null;
    },

    async finishLogin(q, login) {
      if (login.rehash) {
        await userStore.replacePasswordHash(q, login.userId, login.rehash.from, login.rehash.to);
      }
    },

    async prepareRegistration(input, options) {
      const email = validateEmail(input.email);
      const username = validateUsername(input.username);
      const password = validateNewPassword(
        input.password,
        { email: email.email, username: username.username },
        commonPasswords,
      );
      // Fail fast, before the costly hash; the unique index decides races.
      const taken = await userStore.taken(db, email.key, username.key);
      if (taken.email && !options?.emailPrivate) throw alreadyRegistered("email");
      if (taken.username) throw alreadyRegistered("username");
      return {
        email: email.email,
        emailKey: email.key,
        username: username.username,
        usernameKey: username.key,
        passwordHash: await hasher.hash(password),
        emailTaken: taken.email,
      };
    },

    async findLocal(email) {
      const user = await userStore.findByEmailKey(db, emailKey(email));
      if (!user || user.passwordHash === null) return undefined;
      return { userId: user.id, email: user.email, username: user.username };
    },

    async ownerOf(userId) {
      const user = await userStore.findById(db, userId);
      return user && user.passwordHash !== null
        ? { email: user.email, username: user.username }
        : undefined;
    },

    async prepareNewPassword(password, owner) {
      return hasher.hash(validateNewPassword(password, owner, commonPasswords));
    },

    async setPassword(q, userId, hash) {
      await userStore.setPasswordHash(q, userId, hash);
    },

    credentialEpoch(q, userId, lock) {
      return userStore.credentialEpoch(q, userId, lock);
    },

    async createAccount(q, prepared) {
      // A random 63-bit ID collides about never; when it does, draw again.
      for (let attempt = 0; attempt < 8; attempt++) {
        const id = randomUserId();
        const result = await userStore.insert(q, { id, ...prepared, createdAt: clock.now() });
        if (result === "created") return id;
        if (result === "email-taken") throw alreadyRegistered("email");
        if (result === "username-taken") throw alreadyRegistered("username");
      }
      throw new Error("could not draw an unused user ID in 8 attempts");
    },
  };
}
