import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { HarmonyError } from "../errors.js";
import { authErrors } from "./auth-errors.js";

/**
 * The rules for emails, usernames and passwords, each failure naming the rule
 * it broke. These are documented in the README; change both together.
 */
export const accountLimits = {
  emailMaxLength: 254,
  emailLocalMaxLength: 64,
  usernameMinLength: 2,
  usernameMaxLength: 32,
  passwordMinLength: 8,
  passwordMaxLength: 256,
} as const;

// The WHATWG HTML definition of a valid e-mail address: what browsers accept
// in <input type=email>, which is how clients render an `email` field.
const emailPattern =
  /^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

// Letters, marks and digits of any script, and `_`, `.`, `-` after the first
// character, which is a letter or digit.
const usernamePattern = /^[\p{L}\p{N}][\p{L}\p{M}\p{N}_.-]*$/u;

export interface ValidEmail {
  /** As the user typed it, trimmed. */
  readonly email: string;
  /** Lower-cased: the unique key. */
  readonly key: string;
}

/** The key an email is looked up by: trimmed and lower-cased. */
export function emailKey(email: string): string {
  return email.trim().toLowerCase();
}

/** Validates an email for registration. Throws `h.invalid-email`. */
export function validateEmail(input: string): ValidEmail {
  const email = input.trim();
  const fail = (why: string): never => {
    throw new HarmonyError(authErrors.invalidEmail, { message: `invalid email: ${why}` });
  };
  if (email === "") fail("it is empty");
  if (email.length > accountLimits.emailMaxLength) {
    fail(`it is longer than ${accountLimits.emailMaxLength} characters`);
  }
  if (!emailPattern.test(email)) fail("expected an address such as name@example.org");
  const at = email.lastIndexOf("@");
  if (at > accountLimits.emailLocalMaxLength) {
    fail(`the part before @ is longer than ${accountLimits.emailLocalMaxLength} characters`);
  }
  return { email, key: emailKey(email) };
}

export interface ValidUsername {
  /** NFKC-normalised and trimmed, with the case the user chose. */
  readonly username: string;
  /** Lower-cased: the unique key. */
  readonly key: string;
}

/** Validates a username for registration. Throws `h.invalid-username`. */
export function validateUsername(input: string): ValidUsername {
  const username = input.normalize("NFKC").trim();
  const fail = (why: string): never => {
    throw new HarmonyError(authErrors.invalidUsername, { message: `invalid username: ${why}` });
  };
  const length = [...username].length;
  if (length === 0) fail("it is empty");
  if (length < accountLimits.usernameMinLength || length > accountLimits.usernameMaxLength) {
    fail(
      `it must be ${accountLimits.usernameMinLength} to ${accountLimits.usernameMaxLength} characters long`,
    );
  }
  if (!usernamePattern.test(username)) {
    fail("use letters, digits, '_', '.' and '-', starting with a letter or digit");
  }
  return { username, key: username.toLowerCase() };
}

/**
 * The form a password is hashed in: NFKC-normalised (NIST SP 800-63B 5.1.1.2),
 * so the same password typed on two keyboards matches.
 */
export function normalizePassword(password: string): string {
  return password.normalize("NFKC");
}

/** The lower-cased common-password list shipped with cadenza. */
export function loadCommonPasswords(): ReadonlySet<string> {
  const file = fileURLToPath(new URL("./common-passwords.txt", import.meta.url));
  const lines = readFileSync(file, "utf8").split("\n");
  return new Set(lines.filter((line) => line !== "" && !line.startsWith("#")));
}

/**
 * Checks a new password against NIST SP 800-63B: long enough, not absurdly
 * long, not a common password, and not the account's own email or username.
 * Throws `h.invalid-password` naming the rule; returns the normalised password.
 */
export function validateNewPassword(
  input: string,
  account: { email: string; username: string },
  common: ReadonlySet<string>,
): string {
  const password = normalizePassword(input);
  const fail = (why: string): never => {
    throw new HarmonyError(authErrors.invalidPassword, { message: `invalid password: ${why}` });
  };
  const length = [...password].length;
  if (length === 0) fail("it is empty");
  if (length < accountLimits.passwordMinLength) {
    fail(`it must be at least ${accountLimits.passwordMinLength} characters long`);
  }
  if (length > accountLimits.passwordMaxLength) {
    fail(`it must be at most ${accountLimits.passwordMaxLength} characters long`);
  }
  const lowered = password.toLowerCase();
  if (common.has(lowered)) fail("it is one of the most commonly used passwords; choose another");
  const email = account.email.toLowerCase();
  if (lowered === email || lowered === email.slice(0, email.lastIndexOf("@"))) {
    fail("it must not be your email address");
  }
  if (lowered === account.username.toLowerCase()) fail("it must not be your username");
  return password;
}
