import { Code } from "@connectrpc/connect";
import type { Clock } from "../clock.js";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError, hrpcErrors } from "../errors.js";

/**
 * Account events: what happened to accounts, for the homeserver's other
 * services (a chat server creates a profile on `registered`, drops it on
 * `deleted`). Each event is written to an outbox table in the transaction of
 * the change it describes, and pushed to every replica's streams by NOTIFY.
 */

export type AccountEventData =
  | { readonly kind: "registered"; readonly username: string }
  | {
      readonly kind: "federated_user_created";
      readonly homeserver: string;
      readonly foreignUserId: bigint;
      readonly username: string;
    }
  | { readonly kind: "username_changed"; readonly oldUsername: string; readonly username: string }
  | { readonly kind: "disabled" }
  | { readonly kind: "enabled" }
  | { readonly kind: "deleted" }
  | { readonly kind: "sessions_revoked"; readonly sessionIds: readonly string[] }
  /** TOTP turned on or off, by the user or (off only) by an operator. */
  | {
      readonly kind: "second_factor_changed";
      readonly enabled: boolean;
      readonly byOperator: boolean;
    }
  /** A passkey was added or removed, by the user or (removals only) by an operator. */
  | {
      readonly kind: "passkeys_changed";
      readonly added: boolean;
      /** How many passkeys the account has now. */
      readonly passkeys: number;
      readonly byOperator: boolean;
    };

export type AccountEventKind = AccountEventData["kind"];

export interface AccountEvent {
  /** Strictly increasing, in commit order. */
  readonly cursor: bigint;
  readonly userId: bigint;
  readonly occurredAt: number;
  readonly event: AccountEventData;
}

export const accountEventErrors = {
  /** cadenza's own. */
  expired: {
    identifier: "h.account-events-expired",
    code: Code.FailedPrecondition,
    message:
      "events after this cursor are no longer kept (ACCOUNT_EVENT_RETENTION): resync with GetUsers, then stream from the cursor it answers",
  },
} as const satisfies Record<string, ErrorSpec>;

export interface AccountEventStore {
  /**
   * Appends an event inside the caller's transaction, first taking the lock
   * that hands cursors out in commit order (so call it last, just before
   * commit); listeners hear of it on commit.
   */
  append(q: Queryable, userId: bigint, event: AccountEventData, now: number): Promise<bigint>;
  /** Events after `cursor`, oldest first, at most `limit`. */
  after(q: Queryable, cursor: bigint, limit: number): Promise<AccountEvent[]>;
  /** The newest cursor deleted by retention, and the newest cursor of all. */
  bounds(q: Queryable): Promise<{ horizon: bigint; head: bigint }>;
  /** Deletes events that occurred before `cutoff`, moving the horizon; returns how many. */
  deleteBefore(q: Queryable, cutoff: number): Promise<number>;
  listen(
    db: Database,
    handlers: { appended(): void; reconnected(): void },
  ): Promise<() => Promise<void>>;
}

export interface AccountEvents {
  /** Records an event in the caller's transaction; call it as the transaction's last write. */
  record(q: Queryable, userId: bigint, event: AccountEventData): Promise<bigint>;
  /**
   * Every event after `after`, oldest first, then each new one as it
   * commits on any replica, until `signal` aborts. Throws
   * `h.account-events-expired` when events after `after` were deleted.
   */
  stream(after: bigint, signal: AbortSignal): AsyncGenerator<AccountEvent>;
  /** Streams open on this process. */
  readonly consumers: number;
  /** Deletes events older than the retention; returns how many. */
  sweep(): Promise<number>;
  close(): Promise<void>;
}

export type AccountEventsDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly store: AccountEventStore;
  readonly retentionMs: number;
};

/** Events read per query while a stream catches up. */
const BATCH = 500;
/** A stream re-reads this often even without a notification, in case one was lost. */
const RECHECK_MS = 30_000;

export async function createAccountEvents({
  db,
  clock,
  store,
  retentionMs,
}: AccountEventsDeps): Promise<AccountEvents> {
  // Bumped on every notification; a waiting stream wakes when it moves.
  let generation = 0;
  const waiters = new Set<() => void>();
  const wakeAll = (): void => {
    generation++;
    for (const wake of waiters) wake();
  };
  const unlisten = await store.listen(db, { appended: wakeAll, reconnected: wakeAll });
  let consumers = 0;

  /** Waits until `generation` moves past `seen`, `RECHECK_MS` pass, or `signal` aborts. */
  const changed = (seen: number, signal: AbortSignal): Promise<void> => {
    if (generation !== seen || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, RECHECK_MS);
      waiters.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  };

  return {
    record: (q, userId, event) => store.append(q, userId, event, clock.now()),

    async *stream(after, signal) {
      const { horizon, head } = await store.bounds(db);
      if (after < horizon || after > head) {
        throw new HarmonyError(accountEventErrors.expired, {
          message:
            after > head
              ? `cursor ${after} is newer than the newest event (${head}); the database may have been restored: resync with GetUsers`
              : `events after cursor ${after} are no longer kept (ACCOUNT_EVENT_RETENTION; the oldest kept follows ${horizon}): resync with GetUsers, then stream from its cursor`,
        });
      }
      consumers++;
      try {
        let last = after;
        for (;;) {
          const seen = generation;
          const batch = await store.after(db, last, BATCH);
          for (const event of batch) {
            yield event;
            last = event.cursor;
          }
          if (batch.length === BATCH) continue;
          await changed(seen, signal);
          if (signal.aborted) throw signal.reason ?? new HarmonyError(hrpcErrors.unavailable);
        }
      } finally {
        consumers--;
      }
    },

    get consumers() {
      return consumers;
    },

    sweep: () => store.deleteBefore(db, clock.now() - retentionMs),
    close: unlisten,
  };
}
