/**
 * DATABASE_URL as it may be shown: in error lines and logs the password is
 * cut out, whether it is written in the userinfo (`postgres://u:pw@h/db`) or
 * as a `password=` parameter.
 */

/** `url` with its password replaced by `***`; text that is no URL has any `:…@` userinfo cut. */
export function redactDatabaseUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return url.replace(/\/\/([^/@:]*):[^@/]*@/, "//$1:***@");
  }
  if (parsed.password !== "") parsed.password = "***";
  if (parsed.searchParams.has("password")) parsed.searchParams.set("password", "***");
  return parsed.toString();
}

/** The password in a connection string, as written and decoded: never to be logged. */
export function databaseUrlSecrets(url: string): string[] {
  try {
    const parsed = new URL(url);
    const given = [parsed.password, parsed.searchParams.get("password") ?? ""];
    return [...given, ...given.map(decoded)].filter((s) => s !== "");
  } catch {
    return [];
  }
}

/** `text` with every one of `secrets` replaced by `***`. */
export function cutSecrets(text: string, secrets: readonly string[]): string {
  return secrets.reduce((t, s) => (s === "" ? t : t.split(s).join("***")), text);
}

function decoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
