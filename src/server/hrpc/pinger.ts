import type { WebSocket } from "ws";

/**
 * Keeps hRPC WebSockets honest: each is pinged every `intervalMs`, and one
 * whose previous ping went unanswered is terminated, so a peer that vanished
 * without closing does not hold a stream (and its socket) forever.
 *
 * One timer for every socket, not one each: with 10,000 streams open a
 * timer and two closures per socket add up. The sockets are spread over
 * `slots` buckets, one of which is visited every `intervalMs / slots`, so
 * pings go out evenly rather than all at once.
 */
export interface Pinger {
  /** Starts pinging `ws`; it is forgotten when it closes. */
  watch(ws: WebSocket): void;
  /** Stops pinging every socket. */
  close(): void;
  /** Sockets being pinged. */
  readonly watching: number;
}

export function createPinger(intervalMs: number, slots = 30): Pinger {
  const buckets: Set<WebSocket>[] = Array.from({ length: slots }, () => new Set());
  /** Sockets pinged since they last answered. */
  const unanswered = new Set<WebSocket>();
  let added = 0;
  let visited = 0;

  function answered(this: WebSocket): void {
    unanswered.delete(this);
  }
  function forget(this: WebSocket): void {
    unanswered.delete(this);
    for (const bucket of buckets) if (bucket.delete(this)) break;
  }

  const timer = setInterval(
    () => {
      const bucket = buckets[visited++ % slots];
      if (!bucket) return;
      for (const ws of bucket) {
        if (unanswered.has(ws)) {
          ws.terminate();
          continue;
        }
        unanswered.add(ws);
        ws.ping();
      }
    },
    Math.max(1, intervalMs / slots),
  );
  // Open sockets keep the process alive, not their pinger.
  timer.unref();

  return {
    watch(ws) {
      buckets[added++ % slots]?.add(ws);
      ws.on("pong", answered);
      ws.on("close", forget);
    },
    close() {
      clearInterval(timer);
      for (const bucket of buckets) bucket.clear();
      unanswered.clear();
    },
    get watching() {
      let n = 0;
      for (const bucket of buckets) n += bucket.size;
      return n;
    },
  };
}
