import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import type { FederationConfig } from "../config.js";
import type { Queryable } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import { federationErrors } from "./federation-errors.js";
import { fetchKeyOverHrpc } from "./hrpc-key-client.js";
import { type CheckedServer, checkServer, type ResolveHost, resolveServer } from "./server-ids.js";
import type { RemoteKey, RemoteKeyStore } from "./stores.js";

/** A failed verification refetches a homeserver's key at most this often. */
export const REFETCH_INTERVAL_MS = 60_000;

export interface RemoteKeys {
  /**
   * The key of the homeserver `serverId` (as the client gave it: a scheme, if
   * any, says how to reach it), from the cache while younger than
   * FEDERATION_KEY_TTL. The cache is keyed by the canonical server ID.
   */
  get(serverId: string): Promise<{ publicKey: Uint8Array; fresh: boolean }>;
  /**
   * Fetches the key again, for a signature that failed against the cached one
   * (the homeserver may have rotated). Undefined when it was fetched less than
   * a minute ago, so a stream of bad tokens cannot make us hammer a server.
   */
  refresh(serverId: string): Promise<Uint8Array | undefined>;
}

export type RemoteKeysDeps = {
  readonly db: Queryable;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly config: Pick<FederationConfig, "allowInsecure" | "keyTtlMs" | "requestTimeoutMs">;
  readonly remoteKeyStore: RemoteKeyStore;
  readonly resolveHost: ResolveHost;
};

/**
 * Other homeservers' public keys, fetched with their Key RPC over hRPC and
 * cached in Postgres. Fetches go only to vetted addresses, with a timeout and
 * a size cap, and never follow redirects.
 *
 * LoginFederated is unauthenticated, so a fetch must not be a way to probe
 * the network: every failure to reach a homeserver (its name does not
 * resolve or resolves to a refused address, the port is closed or silent,
 * the answer is not a Key response) is answered with the same
 * `hrpc.unavailable` and message, and the detail is logged at warn.
 */
export function createRemoteKeys(deps: RemoteKeysDeps): RemoteKeys {
  const { db, clock, logger, config, remoteKeyStore, resolveHost } = deps;
  const unavailable = () => new HarmonyError(federationErrors.homeserverUnavailable);

  /** Resolves, vets and calls Key; throws a plain Error saying what went wrong, for the log. */
  const download = async (target: CheckedServer): Promise<Uint8Array> => {
    const lookup = await resolveServer(target, {
      allowInsecure: config.allowInsecure,
      resolveHost,
    });
    const key = await fetchKeyOverHrpc(target.baseUrl, {
      lookup,
      timeoutMs: config.requestTimeoutMs,
    });
    if (key.length !== 32) {
      throw new Error(`it answered Key with ${key.length} bytes, not a 32-byte Ed25519 key`);
    }
    return key;
  };

  const fetchKey = async (target: CheckedServer): Promise<Uint8Array> => {
    const serverId = target.canonical;
    let key: Uint8Array;
    try {
      key = await download(target);
    } catch (err) {
      logger.warn({ serverId, url: target.baseUrl, err }, "could not fetch a homeserver's key");
      throw unavailable();
    }
    const now = clock.now();
    await remoteKeyStore.put(db, serverId, key, now);
    memory.set(serverId, { publicKey: key, fetchedAt: now });
    return key;
  };

  // In front of the table, so a login with a cached key does no key query;
  // the table lets replicas (and restarts) share what was fetched.
  const memory = new Map<string, RemoteKey>();
  const cached = async (canonical: string): Promise<RemoteKey | undefined> => {
    const remembered = memory.get(canonical);
    if (remembered && clock.now() - remembered.fetchedAt < config.keyTtlMs) return remembered;
    const stored = await remoteKeyStore.get(db, canonical);
    if (stored) memory.set(canonical, stored);
    return stored;
  };

  return {
    async get(serverId) {
      const target = checkServer(serverId, config.allowInsecure);
      const key = await cached(target.canonical);
      if (key && clock.now() - key.fetchedAt < config.keyTtlMs) {
        return { publicKey: key.publicKey, fresh: false };
      }
      return { publicKey: await fetchKey(target), fresh: true };
    },
    async refresh(serverId) {
      const target = checkServer(serverId, config.allowInsecure);
      // Ask the table, not memory: another replica may have refetched already.
      const stored = await remoteKeyStore.get(db, target.canonical);
      if (stored) memory.set(target.canonical, stored);
      if (stored && clock.now() - stored.fetchedAt < REFETCH_INTERVAL_MS) return undefined;
      return fetchKey(target);
    },
  };
}
