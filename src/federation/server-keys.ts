import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import { isDatabaseUnavailable } from "../db/connection-failure.js";
import type { Database } from "../db/database.js";
import { StartupError } from "../errors.js";
import { generateKeyPair, publicKeyOf } from "./ed25519.js";
import type { ServerKeyStore, StoredServerKey } from "./stores.js";

/** How soon a key reload that found the database unreachable tries again. */
const RELOAD_RETRY_MS = 5_000;

/** This homeserver's signing key, as kept in memory. */
export interface ServerKey {
  readonly id: number;
  readonly publicKey: Uint8Array;
  readonly secretKey: Uint8Array;
  readonly createdAt: number;
  /** Whether its seed is stored encrypted (KEY_ENCRYPTION_KEY). */
  readonly encrypted: boolean;
}

export interface ServerKeys {
  /** The current key; no database work (the Key RPC is on the hot path). */
  current(): ServerKey;
  /** Makes a new key current, for this process and, through NOTIFY, every other. */
  rotate(): Promise<ServerKey>;
  close(): Promise<void>;
}

export type ServerKeysDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly keyStore: ServerKeyStore;
  readonly keyEncryptionKey: Buffer | undefined;
};

/**
 * nonce (12) || AES-256-GCM(secret) || tag (16) under KEY_ENCRYPTION_KEY,
 * bound to `aad` (a key's public half, a secret's name). Used for every
 * secret cadenza keeps in the database.
 */
export function encryptSeed(kek: Buffer, seed: Uint8Array, publicKey: Uint8Array): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", kek, nonce);
  cipher.setAAD(publicKey);
  return Buffer.concat([nonce, cipher.update(seed), cipher.final(), cipher.getAuthTag()]);
}

/** The inverse of {@link encryptSeed}; throws when the key or the data is wrong. */
export function decryptSeed(kek: Buffer, sealed: Uint8Array, publicKey: Uint8Array): Uint8Array {
  const bytes = Buffer.from(sealed);
  const decipher = createDecipheriv("aes-256-gcm", kek, bytes.subarray(0, 12));
  decipher.setAAD(publicKey);
  decipher.setAuthTag(bytes.subarray(bytes.length - 16));
  return Buffer.concat([decipher.update(bytes.subarray(12, bytes.length - 16)), decipher.final()]);
}

/**
 * Loads this server's Ed25519 key from Postgres, creating one on first start
 * (under a lock, so replicas starting together agree on one). With
 * KEY_ENCRYPTION_KEY the seed is stored encrypted; a plain seed found then is
 * encrypted in place. A wrong or missing KEY_ENCRYPTION_KEY stops start-up.
 */
export async function createServerKeys(deps: ServerKeysDeps): Promise<ServerKeys> {
  const { db, clock, logger, keyStore, keyEncryptionKey: kek } = deps;

  const open = (stored: StoredServerKey): ServerKey => {
    let seed: Uint8Array;
    if (stored.encrypted) {
      if (!kek) {
        throw new StartupError(
          "the server key in the database is encrypted: set KEY_ENCRYPTION_KEY to the key it was encrypted with",
        );
      }
      try {
        seed = decryptSeed(kek, stored.privateKey, stored.publicKey);
      } catch {
        throw new StartupError(
          "KEY_ENCRYPTION_KEY does not decrypt the server key in the database: set the key it was encrypted with",
        );
      }
    } else {
      seed = stored.privateKey;
    }
    if (!Buffer.from(publicKeyOf(seed)).equals(Buffer.from(stored.publicKey))) {
      throw new StartupError(
        `server key ${stored.id} in the database is corrupt: its halves do not match`,
      );
    }
    return {
      id: stored.id,
      publicKey: stored.publicKey,
      secretKey: seed,
      createdAt: stored.createdAt,
      encrypted: stored.encrypted,
    };
  };

  const seal = (pair: { secretKey: Uint8Array; publicKey: Uint8Array }) =>
    kek
      ? {
          publicKey: pair.publicKey,
          privateKey: encryptSeed(kek, pair.secretKey, pair.publicKey),
          encrypted: true,
        }
      : { publicKey: pair.publicKey, privateKey: pair.secretKey, encrypted: false };

  const loadOrCreate = (): Promise<ServerKey> =>
    db.transaction(async (tx) => {
      await keyStore.lock(tx);
      const stored = await keyStore.current(tx);
      if (!stored) {
        const pair = generateKeyPair();
        const now = clock.now();
        const id = await keyStore.insert(tx, seal(pair), now);
        logger.info({ keyId: id }, "generated this server's Ed25519 key");
        return { id, ...pair, createdAt: now, encrypted: kek !== undefined };
      }
      const key = open(stored);
      if (kek && !stored.encrypted) {
        const sealed = seal(key);
        await keyStore.replacePrivateKey(tx, key.id, sealed.privateKey, true);
        logger.info({ keyId: key.id }, "encrypted the server key with KEY_ENCRYPTION_KEY");
        return { ...key, encrypted: true };
      }
      return key;
    });

  let current = await loadOrCreate();
  let retry: NodeJS.Timeout | undefined;
  /** Reads the current key after a rotation notice (or a reconnect that may have missed one). */
  const reload = (): void => {
    keyStore.current(db).then(
      (stored) => {
        if (stored && stored.id !== current.id) {
          current = open(stored);
          logger.info({ keyId: current.id }, "server key rotated");
        }
      },
      (err: unknown) => {
        if (!isDatabaseUnavailable(err)) {
          logger.error({ err }, "reloading the server key failed");
          return;
        }
        // The outage itself is logged once, by the database layer: read again once it may be over.
        logger.warn(
          { retryInMs: RELOAD_RETRY_MS },
          "reloading the server key waits for the database",
        );
        clearTimeout(retry);
        retry = setTimeout(reload, RELOAD_RETRY_MS);
        retry.unref();
      },
    );
  };
  const unlisten = await keyStore.listenRotations(db, reload);

  return {
    current: () => current,
    async rotate() {
      const pair = generateKeyPair();
      const now = clock.now();
      const id = await db.transaction(async (tx) => {
        await keyStore.lock(tx);
        return keyStore.insert(tx, seal(pair), now);
      });
      current = { id, ...pair, createdAt: now, encrypted: kek !== undefined };
      return current;
    },
    async close() {
      clearTimeout(retry);
      await unlisten();
    },
  };
}
