import type { Config } from "./config.js";
import { isLoopbackHost } from "./net-address.js";

/**
 * What an operator should hear about at every start: settings that work but
 * leave the server weaker than it should be, each with what to do.
 */
export function startupWarnings(config: Config): string[] {
  const warnings: string[] = [];
  if (config.federation.keyEncryptionKey === undefined && !isLoopbackHost(config.host)) {
    warnings.push(
      "KEY_ENCRYPTION_KEY is unset, so this server's Ed25519 signing key is stored in the database in clear: " +
        "anyone who reads a backup or the data directory can sign federation tokens as this homeserver. " +
        "Generate a key with `npm run cli -- key generate-encryption-key` (in the image: `node dist/cli.js key generate-encryption-key`), " +
        "set KEY_ENCRYPTION_KEY to it and restart; the key is then encrypted in place.",
    );
  }
  warnings.push(...lookalikeWarnings(config));
  return warnings;
}

/** One warning per variable that looks like a misspelt setting (the CLI's warnings too). */
export function lookalikeWarnings(config: Pick<Config, "lookalikes">): string[] {
  return config.lookalikes.map(
    ({ name, meant }) => `${name} is not a cadenza setting; did you mean ${meant}?`,
  );
}
