import type { Logger } from "pino";
import type { Clock } from "../clock.js";
import type { FederationConfig } from "../config.js";
import type { Queryable } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import type { Metrics } from "../metrics.js";
import { federationErrors } from "./federation-errors.js";
import { fetchKeyOverHrpc } from "./hrpc-key-client.js";
import { type CheckedServer, checkServer, type ResolveHost, resolveServer } from "./server-ids.js";
import type { RemoteKey, RemoteKeyStore } from "./stores.js";

/** A failed verification refetches a homeserver's key at most this often. */
export const REFETCH_INTERVAL_MS = 60_000;
/** Most failed fetches remembered at once; beyond it the oldest are forgotten first. */
const MAX_REMEMBERED_FAILURES = 10_000;

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
  readonly config: Pick<
    FederationConfig,
    "allowInsecure" | "keyTtlMs" | "requestTimeoutMs" | "fetchFailureTtlMs" | "maxFetches"
  >;
  readonly remoteKeyStore: RemoteKeyStore;
  readonly resolveHost: ResolveHost;
  readonly metrics?: Pick<Metrics, "keyFetch">;
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
 * `hrpc.unavailable` and message, and the detail is logged at warn. Fetches
 * are capped: one at a time per server (concurrent callers share it), a
 * failure is remembered for FEDERATION_FETCH_FAILURE_TTL (answered at once,
 * without the network), and at most FEDERATION_MAX_FETCHES run at once.
 */
export function createRemoteKeys(deps: RemoteKeysDeps): RemoteKeys {
  const { db, clock, logger, config, remoteKeyStore, resolveHost } = deps;
  const count = (result: Parameters<Metrics["keyFetch"]>[0]) => deps.metrics?.keyFetch(result);
  const unavailable = () => new HarmonyError(federationErrors.homeserverUnavailable);

  // In front of the table, so a login with a cached key does no key query;
  // the table lets replicas (and restarts) share what was fetched.
  const memory = new Map<string, RemoteKey>();
  /** Fetches under way, by canonical server ID: its size is the number in flight. */
  const fetching = new Map<string, Promise<Uint8Array>>();
  /** Until when a server's failed fetch is answered from memory, by canonical server ID. */
  const failedUntil = new Map<string, number>();
  /** Lookups of a key not in memory (table, then network), shared by concurrent callers. */
  const loading = new Map<string, Promise<{ publicKey: Uint8Array; fresh: boolean }>>();

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

  const rememberFailure = (serverId: string) => {
    const now = clock.now();
    if (failedUntil.size >= MAX_REMEMBERED_FAILURES) {
      for (const [id, until] of failedUntil) if (until <= now) failedUntil.delete(id);
      // Still full: forget the oldest (a Map iterates in insertion order).
      const oldest = failedUntil.keys().next();
      if (failedUntil.size >= MAX_REMEMBERED_FAILURES && !oldest.done) {
        failedUntil.delete(oldest.value);
      }
    }
    failedUntil.delete(serverId);
    failedUntil.set(serverId, now + config.fetchFailureTtlMs);
  };

  /** Fetches a key over the network, within the caps, and stores it. */
  const fetchKey = async (target: CheckedServer): Promise<Uint8Array> => {
    const serverId = target.canonical;
    const running = fetching.get(serverId);
    if (running) return running;
    const until = failedUntil.get(serverId);
    if (until !== undefined) {
      if (clock.now() < until) {
        count("negative_cache");
        throw unavailable();
      }
      failedUntil.delete(serverId);
    }
    if (fetching.size >= config.maxFetches) {
      logger.warn(
        { serverId, inFlight: fetching.size },
        "not fetching a homeserver's key: FEDERATION_MAX_FETCHES fetches are in flight",
      );
      count("busy");
      throw unavailable();
    }
    const fetched = download(target)
      .then(
        async (key) => {
          const now = clock.now();
          await remoteKeyStore.put(db, serverId, key, now);
          memory.set(serverId, { publicKey: key, fetchedAt: now });
          count("fetched");
          return key;
        },
        (err: unknown) => {
          rememberFailure(serverId);
          count("failed");
          logger.warn(
            { serverId, url: target.baseUrl, err },
            "could not fetch a homeserver's key; answering hrpc.unavailable for FEDERATION_FETCH_FAILURE_TTL",
          );
          throw unavailable();
        },
      )
      .finally(() => fetching.delete(serverId));
    fetching.set(serverId, fetched);
    return fetched;
  };

  const young = (key: RemoteKey | undefined, maxAgeMs: number): key is RemoteKey =>
    key !== undefined && clock.now() - key.fetchedAt < maxAgeMs;

  const load = async (target: CheckedServer) => {
    const stored = await remoteKeyStore.get(db, target.canonical);
    if (stored) memory.set(target.canonical, stored);
    if (young(stored, config.keyTtlMs)) return { publicKey: stored.publicKey, fresh: false };
    return { publicKey: await fetchKey(target), fresh: true };
  };

  return {
    async get(serverId) {
      const target = checkServer(serverId, config.allowInsecure);
      const id = target.canonical;
      const remembered = memory.get(id);
      if (young(remembered, config.keyTtlMs)) {
        return { publicKey: remembered.publicKey, fresh: false };
      }
      // Registered before the first await, so callers arriving together
      // share one table query and one fetch.
      let pending = loading.get(id);
      if (!pending) {
        pending = load(target).finally(() => loading.delete(id));
        loading.set(id, pending);
      }
      return pending;
    },
    async refresh(serverId) {
      const target = checkServer(serverId, config.allowInsecure);
      // Ask the table, not memory: another replica may have refetched already.
      const stored = await remoteKeyStore.get(db, target.canonical);
      if (stored) memory.set(target.canonical, stored);
      if (young(stored, REFETCH_INTERVAL_MS)) return undefined;
      return fetchKey(target);
    },
  };
}
