import type {
  ForeignUserStore,
  RemoteKeyStore,
  ServerKeyStore,
  StoredServerKey,
  UsedTokenStore,
} from "../federation/stores.js";
import { maybeOne, one } from "./database.js";

/** The channel on which a key rotation is announced to every process. */
export const keyRotationChannel = "cadenza_server_keys";
const KEY_LOCK = 0x63_61_64_6b_79; // "cadky"

export function createServerKeyStore(): ServerKeyStore {
  return {
    async current(q) {
      const row = await maybeOne<{
        id: number;
        public_key: Uint8Array;
        private_key: Uint8Array;
        encrypted: boolean;
        created_at: Date;
      }>(
        q,
        "SELECT id, public_key, private_key, encrypted, created_at FROM server_keys ORDER BY id DESC LIMIT 1",
      );
      return (
        row &&
        ({
          id: row.id,
          publicKey: row.public_key,
          privateKey: row.private_key,
          encrypted: row.encrypted,
          createdAt: row.created_at.getTime(),
        } satisfies StoredServerKey)
      );
    },
    async insert(q, key, now) {
      const row = await one<{ id: number }>(
        q,
        `INSERT INTO server_keys (public_key, private_key, encrypted, created_at)
         VALUES ($1, $2, $3, $4) RETURNING id`,
        [key.publicKey, key.privateKey, key.encrypted, new Date(now)],
      );
      await q.query("SELECT pg_notify($1, $2)", [keyRotationChannel, String(row.id)]);
      return row.id;
    },
    async replacePrivateKey(q, id, privateKey, encrypted) {
      await q.query("UPDATE server_keys SET private_key = $2, encrypted = $3 WHERE id = $1", [
        id,
        privateKey,
        encrypted,
      ]);
    },
    async lock(q) {
      await q.query("SELECT pg_advisory_xact_lock($1)", [KEY_LOCK]);
    },
    listenRotations(db, onRotation) {
      return db.listen(keyRotationChannel, { message: onRotation, reconnected: onRotation });
    },
  };
}

export function createRemoteKeyStore(): RemoteKeyStore {
  return {
    async get(q, serverId) {
      const row = await maybeOne<{ public_key: Uint8Array; fetched_at: Date }>(
        q,
        "SELECT public_key, fetched_at FROM remote_server_keys WHERE server_id = $1",
        [serverId],
      );
      return row && { publicKey: row.public_key, fetchedAt: row.fetched_at.getTime() };
    },
    async put(q, serverId, publicKey, now) {
      await q.query(
        `INSERT INTO remote_server_keys (server_id, public_key, fetched_at) VALUES ($1, $2, $3)
         ON CONFLICT (server_id) DO UPDATE SET public_key = $2, fetched_at = $3`,
        [serverId, publicKey, new Date(now)],
      );
    },
  };
}

export function createUsedTokenStore(): UsedTokenStore {
  return {
    async remember(q, tokenHash, expiresAt) {
      const result = await q.query(
        `INSERT INTO used_federation_tokens (token_hash, expires_at) VALUES ($1, $2)
         ON CONFLICT (token_hash) DO NOTHING`,
        [tokenHash, new Date(expiresAt)],
      );
      return result.rowCount === 1;
    },
    async deleteExpired(q, now) {
      const result = await q.query("DELETE FROM used_federation_tokens WHERE expires_at <= $1", [
        new Date(now),
      ]);
      return result.rowCount;
    },
  };
}

/** uint64 foreign IDs are kept in int8 as the same 64 bits. */
const toInt8 = (id: bigint): bigint => BigInt.asIntN(64, id);

export function createForeignUserStore(): ForeignUserStore {
  return {
    async upsert(q, user) {
      // The CTE reads the statement's snapshot, so it sees the name before this
      // statement's update (with FOR UPDATE it would follow the row to the new one).
      const row = await one<{
        id: bigint;
        created: boolean;
        previous: string | null;
        disabled: boolean;
      }>(
        q,
        `WITH previous AS (
           SELECT username FROM users WHERE homeserver = $3 AND foreign_user_id = $4
         )
         INSERT INTO users (id, username, homeserver, foreign_user_id, avatar, created_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (homeserver, foreign_user_id)
           DO UPDATE SET username = EXCLUDED.username, avatar = EXCLUDED.avatar
           RETURNING id, (xmax = 0) AS created, (SELECT username FROM previous) AS previous,
                     disabled_at IS NOT NULL AS disabled`,
        [
          user.id,
          user.username,
          user.homeserver,
          toInt8(user.foreignUserId),
          user.avatar ?? null,
          new Date(user.createdAt),
        ],
      );
      return {
        id: row.id,
        created: row.created,
        previousUsername: row.previous ?? user.username,
        disabled: row.disabled,
      };
    },
    async profile(q, userId) {
      const row = await maybeOne<{
        username: string;
        avatar: string | null;
        homeserver: string | null;
      }>(q, "SELECT username, avatar, homeserver FROM users WHERE id = $1", [userId]);
      return row && { username: row.username, avatar: row.avatar, local: row.homeserver === null };
    },
  };
}
