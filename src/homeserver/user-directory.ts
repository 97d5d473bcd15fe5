import { Code } from "@connectrpc/connect";
import type { Database, Queryable } from "../db/database.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";

/** A user as the homeserver's other services see them. */
export interface DirectoryUser {
  readonly userId: bigint;
  readonly username: string;
  /** Empty for a local user. */
  readonly homeserver: string;
  readonly foreignUserId: bigint;
  readonly createdAt: number;
  readonly disabled: boolean;
}

export interface DirectoryStore {
  /**
   * The users among `ids`, and the newest account event cursor, read in one
   * snapshot: the users reflect exactly the events up to that cursor.
   */
  usersWithCursor(
    q: Queryable,
    ids: readonly bigint[],
  ): Promise<{ users: DirectoryUser[]; cursor: bigint }>;
}

/** The most user IDs one GetUsers call may ask for. */
export const MAX_USER_IDS = 1000;

export const directoryErrors = {
  /** cadenza's own. */
  tooManyUserIds: {
    identifier: "h.too-many-user-ids",
    code: Code.InvalidArgument,
    message: `ask for at most ${MAX_USER_IDS} user IDs per call`,
  },
} as const satisfies Record<string, ErrorSpec>;

export interface UserDirectory {
  /** The known users among `ids` (unknown ones are absent) and the cursor they are current to. */
  get(ids: readonly bigint[]): Promise<{ users: DirectoryUser[]; cursor: bigint }>;
}

export function createUserDirectory({
  db,
  store,
}: {
  readonly db: Database;
  readonly store: DirectoryStore;
}): UserDirectory {
  return {
    async get(ids) {
      if (ids.length > MAX_USER_IDS) {
        throw new HarmonyError(directoryErrors.tooManyUserIds, {
          message: `${ids.length} user IDs were asked for; ask for at most ${MAX_USER_IDS} per call`,
        });
      }
      // IDs above int8's range cannot exist: leave them out rather than fail the query.
      const valid = [...new Set(ids)].filter((id) => id > 0n && id <= 0x7fff_ffff_ffff_ffffn);
      return store.usersWithCursor(db, valid);
    },
  };
}
