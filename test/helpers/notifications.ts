import { createHash } from "node:crypto";
import type { Database, NotificationHandlers } from "../../src/db/database.js";
import { sessionDeletionChannel, userChangeChannel } from "../../src/db/session-store.js";

interface Waiter {
  readonly channel: string;
  readonly matches: (payload: string) => boolean;
  readonly resolve: () => void;
}

/**
 * `db` as cadenza sees it, with a way to wait for its notifications:
 * `next(channel, matches)` resolves once cadenza's listener on `channel` has
 * run for a payload that `matches`. A test that needs a NOTIFY to have
 * reached a cache (a deletion on another replica, say) awaits that instead
 * of polling until the cache forgets. Call it before the change that
 * notifies.
 */
export function watchNotifications(db: Database) {
  const waiting = new Set<Waiter>();
  const listen = (channel: string, handlers: NotificationHandlers) =>
    db.listen(channel, {
      ...handlers,
      message(payload) {
        handlers.message(payload);
        for (const w of waiting) {
          if (w.channel !== channel || !w.matches(payload)) continue;
          waiting.delete(w);
          w.resolve();
        }
      },
    });
  const watched = new Proxy(db, {
    get: (target, property, receiver) =>
      property === "listen" ? listen : Reflect.get(target, property, receiver),
  });
  const next = (channel: string, matches: (payload: string) => boolean) =>
    new Promise<void>((resolve) => {
      waiting.add({ channel, matches, resolve });
    });
  return {
    db: watched,
    next,
    /** The announcement that the session of `token` was deleted has been heard. */
    sessionDeleted: (token: string) => {
      const hash = createHash("sha256").update(token).digest("hex");
      return next(sessionDeletionChannel, (p) => p === "*" || p.split(",").includes(hash));
    },
    /** The announcement that user `userId` changed has been heard. */
    userChanged: (userId: bigint) => next(userChangeChannel, (p) => p === String(userId)),
  };
}
