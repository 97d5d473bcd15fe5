/**
 * Row 5 of `npm run bench` (bench/run.ts): what open streams and idle
 * connections cost a server, so that operators can size a node. Each
 * measurement runs on a fresh server process, so one's garbage is not
 * counted in the next, and reports the server's RSS with everything open,
 * its RSS just before (the same process, idle), and the difference per
 * connection.
 */
import type { Result, StreamProtocol, Task } from "./load.js";

export interface StreamRow {
  row: string;
  what: string;
  measured: string;
  ceiling: string;
  ratio: number | undefined;
  goal: string;
}

export interface StreamRowsHarness {
  readonly size: { readonly streams: number; readonly samples: number };
  /** Starts a fresh server on the run's database, with `env` over the usual settings. */
  start(env?: Record<string, string>): Promise<{ url: string; pid: number; stop(): Promise<void> }>;
  load(task: Task): Promise<Result>;
  record(row: StreamRow, ok: boolean): void;
}

/** The goal for open streams (issue 14): memory and delivery, on every transport. */
const RSS_GOAL_MB = 300;
const DELIVERY_P99_GOAL_MS = 50;

const transports: Record<StreamProtocol, string> = {
  "connect-h1": "Connect HTTP/1.1",
  "grpc-h2": "gRPC HTTP/2",
  "hrpc-ws": "hRPC WebSocket",
};

/** `RSS 212 MB (idle 98 MB: 11.7 KB each)` */
function memory(r: Result): string {
  const rss = r.extra?.rssMb ?? 0;
  const base = r.extra?.baseRssMb ?? 0;
  const each = r.extra?.perConnectionKb ?? 0;
  return `RSS ${rss.toFixed(0)} MB (idle ${base.toFixed(0)} MB: ${each.toFixed(1)} KB each)`;
}

export async function streamRows(h: StreamRowsHarness): Promise<void> {
  const count = h.size.streams.toLocaleString("en");

  // Open StreamSteps calls: memory, and NextStep → step-on-the-stream delay.
  for (const protocol of ["connect-h1", "grpc-h2", "hrpc-ws"] as StreamProtocol[]) {
    const server = await h.start();
    const r = await h.load({
      kind: "streams",
      url: server.url,
      protocol,
      count: h.size.streams,
      samples: h.size.samples,
      serverPid: server.pid,
    });
    await server.stop();
    const rss = r.extra?.rssMb ?? 0;
    h.record(
      {
        row: "5",
        what: `${r.count.toLocaleString("en")} StreamSteps, ${transports[protocol]}`,
        measured: `${memory(r)}; NextStep→stream p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms (${r.extra?.samples ?? 0} samples, ${r.errors} errors)`,
        ceiling: "—",
        ratio: undefined,
        goal: `≤ ${RSS_GOAL_MB} MB, ≤ ${DELIVERY_P99_GOAL_MS} ms`,
      },
      rss <= RSS_GOAL_MB &&
        r.p99Ms <= DELIVERY_P99_GOAL_MS &&
        r.errors === 0 &&
        r.count === h.size.streams,
    );
  }

  // Idle connections, for sizing: no goal, only that every one stayed open.
  // Their timeouts are raised so that none is closed before it is counted.
  const idle = [
    {
      kind: "idle-websockets",
      what: `${count} hRPC WebSockets that have not sent their request`,
      env: { HRPC_STREAM_REQUEST_TIMEOUT: "10m" },
    },
    {
      kind: "idle-http1",
      what: `${count} idle HTTP/1.1 keep-alive connections (after one GET /healthz)`,
      env: { IDLE_TIMEOUT: "10m" },
    },
  ] as const;
  for (const { kind, what, env } of idle) {
    const server = await h.start(env);
    const r = await h.load({ kind, url: server.url, count: h.size.streams, serverPid: server.pid });
    await server.stop();
    h.record(
      {
        row: "5",
        what,
        measured: `${memory(r)}${r.errors ? `; ${r.errors} errors` : ""}`,
        ceiling: "—",
        ratio: undefined,
        goal: "— (sizing)",
      },
      r.errors === 0 && r.count === h.size.streams,
    );
  }
}
