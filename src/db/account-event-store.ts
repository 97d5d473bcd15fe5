import type {
  AccountEvent,
  AccountEventData,
  AccountEventKind,
  AccountEventStore,
} from "../events/account-events.js";
import { many, one } from "./database.js";

/** Announced on commit of every event; the payload is the cursor. */
export const accountEventChannel = "cadenza_account_events";
/** The lock that hands cursors out in commit order. */
const EVENT_ORDER_LOCK = 0x63_61_64_65_76; // "cadev"

const toJson = (event: AccountEventData): Record<string, unknown> => {
  switch (event.kind) {
    case "registered":
      return { username: event.username };
    case "federated_user_created":
      return {
        homeserver: event.homeserver,
        foreignUserId: event.foreignUserId.toString(),
        username: event.username,
      };
    case "username_changed":
      return { oldUsername: event.oldUsername, username: event.username };
    case "sessions_revoked":
      return { sessionIds: [...event.sessionIds] };
    case "second_factor_changed":
      return { enabled: event.enabled, byOperator: event.byOperator };
    case "passkeys_changed":
      return { added: event.added, passkeys: event.passkeys, byOperator: event.byOperator };
    default:
      return {};
  }
};

const fromJson = (kind: AccountEventKind, data: Record<string, unknown>): AccountEventData => {
  const text = (name: string): string => String(data[name] ?? "");
  switch (kind) {
    case "registered":
      return { kind, username: text("username") };
    case "federated_user_created":
      return {
        kind,
        homeserver: text("homeserver"),
        foreignUserId: BigInt(text("foreignUserId") || "0"),
        username: text("username"),
      };
    case "username_changed":
      return { kind, oldUsername: text("oldUsername"), username: text("username") };
    case "sessions_revoked":
      return {
        kind,
        sessionIds: Array.isArray(data.sessionIds) ? data.sessionIds.map(String) : [],
      };
    case "second_factor_changed":
      return { kind, enabled: data.enabled === true, byOperator: data.byOperator === true };
    case "passkeys_changed":
      return {
        kind,
        added: data.added === true,
        passkeys: Number(data.passkeys ?? 0),
        byOperator: data.byOperator === true,
      };
    default:
      return { kind };
  }
};

/** The account event outbox in Postgres (migrations 0004, 0008, 0009). */
export function createAccountEventStore(): AccountEventStore {
  return {
    async append(q, userId, event, now) {
      // One statement: the ordering lock, the row and the notification.
      const row = await one<{ cursor: bigint }>(
        q,
        `WITH ordered AS (SELECT pg_advisory_xact_lock($1)),
              appended AS (
                INSERT INTO account_events (user_id, kind, data, occurred_at)
                SELECT $2, $3, $4, $5 FROM ordered
                RETURNING cursor
              )
         SELECT cursor, pg_notify($6, cursor::text) FROM appended`,
        [
          EVENT_ORDER_LOCK,
          userId,
          event.kind,
          JSON.stringify(toJson(event)),
          new Date(now),
          accountEventChannel,
        ],
      );
      return row.cursor;
    },

    async after(q, cursor, limit): Promise<AccountEvent[]> {
      const rows = await many<{
        cursor: bigint;
        user_id: bigint;
        kind: AccountEventKind;
        data: Record<string, unknown>;
        occurred_at: Date;
      }>(
        q,
        `SELECT cursor, user_id, kind, data, occurred_at FROM account_events
          WHERE cursor > $1 ORDER BY cursor LIMIT $2`,
        [cursor, limit],
      );
      return rows.map((r) => ({
        cursor: r.cursor,
        userId: r.user_id,
        occurredAt: r.occurred_at.getTime(),
        event: fromJson(r.kind, r.data),
      }));
    },

    async bounds(q) {
      return one<{ horizon: bigint; head: bigint }>(
        q,
        `SELECT h.cursor AS horizon,
                greatest(h.cursor, coalesce((SELECT max(cursor) FROM account_events), 0)) AS head
           FROM account_event_horizon h`,
      );
    },

    async deleteBefore(q, cutoff) {
      const row = await one<{ deleted: bigint }>(
        q,
        `WITH gone AS (
           DELETE FROM account_events WHERE occurred_at < $1 RETURNING cursor
         ), moved AS (
           UPDATE account_event_horizon
              SET cursor = greatest(cursor, (SELECT max(cursor) FROM gone))
            WHERE EXISTS (SELECT 1 FROM gone)
         )
         SELECT count(*) AS deleted FROM gone`,
        [new Date(cutoff)],
      );
      return Number(row.deleted);
    },

    listen(db, handlers) {
      return db.listen(accountEventChannel, {
        message: () => handlers.appended(),
        reconnected: () => handlers.reconnected(),
      });
    },
  };
}
