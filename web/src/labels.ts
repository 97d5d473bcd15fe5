/**
 * Words a person reads for the machine names a server sends (step titles,
 * options, field names). The flow is the server's: a name not listed here is
 * shown as itself, made readable ("reset-password" → "Reset password"), so a
 * step no client knew of yet still renders.
 */

const titles: Readonly<Record<string, string>> = {
  initial: "Welcome",
  login: "Log in",
  register: "Create an account",
  "register-input-token": "Confirm your email",
  "other-options": "Other options",
  "reset-password-send-token": "Reset your password",
  "reset-password-input-token": "Choose a new password",
  "delete-user-send-token": "Delete your account",
  "delete-user-input-token": "Confirm the deletion",
  "change-password": "Change your password",
  passkey: "Sign in with a passkey",
  totp: "Two-step verification",
  "recovery-code": "Use a recovery code",
  success: "Done",
};

const options: Readonly<Record<string, string>> = {
  login: "Log in",
  register: "Register",
  "other-options": "Other options",
  "reset-password": "Reset password",
  "delete-user": "Delete account",
  "change-password": "Change password",
  "back-to-initial": "Back to the start",
  passkey: "Sign in with a passkey",
};

const fields: Readonly<Record<string, string>> = {
  email: "Email",
  username: "Username",
  password: "Password",
  "new-password": "New password",
  token: "Code",
  code: "Code from your authenticator app, or a recovery code",
  assertion: "Passkey",
};

/** "reset-password" → "Reset password"; an empty name stays recognisable. */
export function readable(name: string): string {
  const words = name.replace(/[-_]+/g, " ").trim();
  if (words === "") return "(unnamed)";
  return words[0]?.toUpperCase() + words.slice(1);
}

const lookup = (table: Readonly<Record<string, string>>, name: string) =>
  Object.hasOwn(table, name) ? (table[name] as string) : readable(name);

export const titleLabel = (title: string): string => lookup(titles, title);
export const optionLabel = (option: string): string => lookup(options, option);
export const fieldLabel = (name: string): string => lookup(fields, name);
