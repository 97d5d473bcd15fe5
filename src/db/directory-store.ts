import type { DirectoryStore, DirectoryUser } from "../homeserver/user-directory.js";
import { many } from "./database.js";

/** Users and the event head in one statement, so one snapshot. */
export function createDirectoryStore(): DirectoryStore {
  return {
    async usersWithCursor(q, ids) {
      const rows = await many<{
        head: bigint;
        id: bigint | null;
        username: string | null;
        homeserver: string | null;
        foreign_user_id: bigint | null;
        created_at: Date | null;
        disabled: boolean | null;
      }>(
        q,
        `WITH head AS (
           SELECT greatest(h.cursor, coalesce((SELECT max(cursor) FROM account_events), 0)) AS head
             FROM account_event_horizon h
         )
         SELECT head.head, u.id, u.username, u.homeserver, u.foreign_user_id, u.created_at,
                u.disabled_at IS NOT NULL AS disabled
           FROM head LEFT JOIN users u ON u.id = ANY($1::int8[])`,
        [ids.map(String)],
      );
      const users: DirectoryUser[] = [];
      for (const r of rows) {
        if (r.id === null) continue;
        users.push({
          userId: r.id,
          username: r.username ?? "",
          homeserver: r.homeserver ?? "",
          foreignUserId: BigInt.asUintN(64, r.foreign_user_id ?? 0n),
          createdAt: r.created_at?.getTime() ?? 0,
          disabled: r.disabled ?? false,
        });
      }
      return { users, cursor: rows[0]?.head ?? 0n };
    },
  };
}
