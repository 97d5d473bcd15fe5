import type { Database, Queryable } from "../db/database.js";

/** The storage federation needs, implemented in src/db. */

export interface StoredServerKey {
  readonly id: number;
  readonly publicKey: Uint8Array;
  readonly privateKey: Uint8Array;
  readonly encrypted: boolean;
  readonly createdAt: number;
}

export interface ServerKeyStore {
  current(q: Queryable): Promise<StoredServerKey | undefined>;
  /** Adds a key, which becomes current; running processes hear of it on commit. */
  insert(
    q: Queryable,
    key: { publicKey: Uint8Array; privateKey: Uint8Array; encrypted: boolean },
    now: number,
  ): Promise<number>;
  replacePrivateKey(
    q: Queryable,
    id: number,
    privateKey: Uint8Array,
    encrypted: boolean,
  ): Promise<void>;
  /** Serialises key creation between processes starting together (inside a transaction). */
  lock(q: Queryable): Promise<void>;
  listenRotations(db: Database, onRotation: () => void): Promise<() => Promise<void>>;
}

export interface RemoteKey {
  readonly publicKey: Uint8Array;
  readonly fetchedAt: number;
}

export interface RemoteKeyStore {
  get(q: Queryable, serverId: string): Promise<RemoteKey | undefined>;
  put(q: Queryable, serverId: string, publicKey: Uint8Array, now: number): Promise<void>;
}

export interface UsedTokenStore {
  /** Records a token as used; false when it already was. */
  remember(q: Queryable, tokenHash: Buffer, expiresAt: number): Promise<boolean>;
  deleteExpired(q: Queryable, now: number): Promise<number>;
}

export interface ForeignUserStore {
  /**
   * The local account of a homeserver's user, created on first login; the
   * username and avatar are refreshed each time (`previousUsername` is the
   * name before, or the new one for a new account). When the random ID drawn
   * for a new account is taken, the unique violation on users_pkey is thrown.
   */
  upsert(
    q: Queryable,
    user: {
      id: bigint;
      homeserver: string;
      foreignUserId: bigint;
      username: string;
      avatar: string | undefined;
      createdAt: number;
    },
  ): Promise<{ id: bigint; created: boolean; previousUsername: string; disabled: boolean }>;
  /** A user's profile, for the token their homeserver signs. */
  profile(
    q: Queryable,
    userId: bigint,
  ): Promise<{ username: string; avatar: string | null; local: boolean } | undefined>;
}
