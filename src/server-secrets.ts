import { randomBytes } from "node:crypto";
import type { Clock } from "./clock.js";
import type { Database } from "./db/database.js";
import { maybeOne } from "./db/database.js";
import { StartupError } from "./errors.js";
import { decryptSeed, encryptSeed } from "./federation/server-keys.js";

const SECRET_LOCK = 0x63_61_64_73_73; // "cadss"

/**
 * A 32-byte secret of the server's, kept in the database beside its signing
 * key (and, like it, encrypted under KEY_ENCRYPTION_KEY when that is set),
 * made on first start under a lock so that replicas agree on one.
 */
export async function loadServerSecret(deps: {
  readonly db: Database;
  readonly clock: Clock;
  readonly name: string;
  readonly keyEncryptionKey: Buffer | undefined;
}): Promise<Buffer> {
  const { db, clock, name, keyEncryptionKey: kek } = deps;
  const aad = Buffer.from(`cadenza/server-secret/${name}`);
  return db.transaction(async (tx) => {
    await tx.query("SELECT pg_advisory_xact_lock($1)", [SECRET_LOCK]);
    const row = await maybeOne<{ secret: Uint8Array; encrypted: boolean }>(
      tx,
      "SELECT secret, encrypted FROM server_secrets WHERE name = $1",
      [name],
    );
    if (!row) {
      const secret = randomBytes(32);
      await tx.query(
        "INSERT INTO server_secrets (name, secret, encrypted, created_at) VALUES ($1, $2, $3, $4)",
        [
          name,
          kek ? encryptSeed(kek, secret, aad) : secret,
          kek !== undefined,
          new Date(clock.now()),
        ],
      );
      return secret;
    }
    if (!row.encrypted) {
      const secret = Buffer.from(row.secret);
      if (kek) {
        await tx.query("UPDATE server_secrets SET secret = $2, encrypted = true WHERE name = $1", [
          name,
          encryptSeed(kek, secret, aad),
        ]);
      }
      return secret;
    }
    if (!kek) {
      throw new StartupError(
        `the server secret ${name} in the database is encrypted: set KEY_ENCRYPTION_KEY to the key it was encrypted with`,
      );
    }
    try {
      return Buffer.from(decryptSeed(kek, row.secret, aad));
    } catch {
      throw new StartupError(
        `KEY_ENCRYPTION_KEY does not decrypt the server secret ${name}: set the key it was encrypted with`,
      );
    }
  });
}
