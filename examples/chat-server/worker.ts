/**
 * A worker that keeps the chat server's profiles in step with cadenza's
 * accounts by following StreamAccountEvents from a stored cursor: it creates
 * a profile on `registered` and `federated_user_created`, renames it on
 * `username_changed`, drops it on `deleted`. It stores the cursor of every
 * event it applied, so a restart resumes exactly after it, and it reconnects
 * (to any cadenza replica) after a failure. If it was away longer than
 * cadenza keeps events, it resyncs the profiles it has with GetUsers.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type { StreamAccountEventsResponse } from "../../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import type { Cadenza } from "./cadenza-client.js";
import { harmonyIdentifier } from "./server.js";

export interface Profile {
  username: string;
  homeserver: string;
}

/** Where the worker keeps its state; a real chat server uses its own database, in one transaction. */
export interface ProfileStore {
  cursor(): Promise<bigint>;
  /** Applies an event and stores its cursor, together. */
  apply(cursor: bigint, userId: bigint, change: Profile | "deleted" | undefined): Promise<void>;
  userIds(): Promise<bigint[]>;
  /** Replaces every profile (after a resync) and stores the cursor they are current to. */
  replaceAll(cursor: bigint, profiles: Map<bigint, Profile>): Promise<void>;
}

function changeOf(e: StreamAccountEventsResponse, current: Profile | undefined) {
  switch (e.event.case) {
    case "registered":
      return { username: e.event.value.username, homeserver: "" };
    case "federatedUserCreated":
      return { username: e.event.value.username, homeserver: e.event.value.homeserver };
    case "usernameChanged":
      return current ? { ...current, username: e.event.value.username } : undefined;
    case "deleted":
      return "deleted" as const;
    default:
      return undefined; // disabled, enabled, sessions_revoked: nothing to store here
  }
}

async function resync(cadenza: Cadenza, store: ProfileStore): Promise<void> {
  const ids = await store.userIds();
  const profiles = new Map<bigint, Profile>();
  let cursor: bigint | undefined;
  for (let i = 0; i < Math.max(ids.length, 1); i += 1000) {
    const page = await cadenza.getUsers({ userIds: ids.slice(i, i + 1000) });
    // The first page's cursor is the safe one to resume from: every later
    // change is replayed, and applying a change twice is harmless here.
    cursor ??= page.cursor;
    for (const u of page.users) {
      profiles.set(u.userId, { username: u.username, homeserver: u.homeserver });
    }
  }
  await store.replaceAll(cursor ?? 0n, profiles);
}

/** Follows the event stream until `signal` aborts. */
export async function followAccountEvents(
  cadenza: Cadenza,
  store: ProfileStore,
  options: { signal: AbortSignal; current: (userId: bigint) => Profile | undefined },
): Promise<void> {
  let backoffMs = 100;
  while (!options.signal.aborted) {
    try {
      const after = await store.cursor();
      for await (const e of cadenza.streamAccountEvents({ after }, { signal: options.signal })) {
        await store.apply(e.cursor, e.userId, changeOf(e, options.current(e.userId)));
        backoffMs = 100;
      }
    } catch (err) {
      if (options.signal.aborted) return;
      if (harmonyIdentifier(err) === "h.account-events-expired") {
        await resync(cadenza, store);
        continue;
      }
      // Unavailable (a replica shutting down, cadenza restarting): reconnect.
      if (ConnectError.from(err).code !== Code.Unavailable) throw err;
      await sleep(backoffMs, undefined, { signal: options.signal }).catch(() => {});
      backoffMs = Math.min(backoffMs * 2, 5000);
    }
  }
}
