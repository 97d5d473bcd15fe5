import {
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  type LabelValues,
  Registry,
} from "prom-client";

/**
 * cadenza's Prometheus metrics, served at `/metrics` on the internal port.
 * One registry per AppContext (tests run several in one process). RPC
 * durations follow OpenTelemetry's `rpc.server.call.duration` (seconds,
 * its recommended buckets, `rpc_system`/`rpc_service`/`rpc_method` and the
 * status code as labels).
 */
export interface Metrics {
  readonly registry: Registry;
  /** One finished call. */
  rpc(
    labels: { system: string; service: string; method: string; code: string },
    seconds: number,
  ): void;
  login(outcome: "success" | "bad_credentials" | "throttled" | "disabled"): void;
  registration(outcome: "success" | "refused"): void;
  limitExceeded(limit: string): void;
  federatedLogin(outcome: "success" | "refused"): void;
  keyFetch(result: "fetched" | "failed" | "negative_cache" | "busy"): void;
  streamOpened(transport: string): void;
  streamClosed(transport: string): void;
  /**
   * Gauges read when Prometheus scrapes: each function is called then, and
   * may query the database (live flows).
   */
  observe(gauges: Partial<GaugeSources>): void;
  /** The exposition text. */
  text(): Promise<string>;
  readonly contentType: string;
}

export interface GaugeSources {
  argon2InFlight(): number;
  argon2Queued(): number;
  liveFlows(): Promise<number>;
  eventConsumers(): number;
  pool(): { total: number; idle: number; waiting: number } | undefined;
}

/** OpenTelemetry's recommended bucket boundaries for rpc.server.call.duration, in seconds. */
const RPC_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const rpc = new Histogram({
    name: "rpc_server_call_duration_seconds",
    help: "Duration of RPCs served, by protocol (rpc_system), service, method and status code",
    labelNames: ["rpc_system", "rpc_service", "rpc_method", "rpc_response_status_code"] as const,
    buckets: RPC_BUCKETS,
    registers,
  });
  const logins = new Counter({
    name: "cadenza_logins_total",
    help: "Password logins by outcome",
    labelNames: ["outcome"] as const,
    registers,
  });
  const registrations = new Counter({
    name: "cadenza_registrations_total",
    help: "Registrations by outcome",
    labelNames: ["outcome"] as const,
    registers,
  });
  const limits = new Counter({
    name: "cadenza_limit_exceeded_total",
    help: "Calls refused by an abuse limit, by limit",
    labelNames: ["limit"] as const,
    registers,
  });
  const federated = new Counter({
    name: "cadenza_federated_logins_total",
    help: "LoginFederated calls by outcome",
    labelNames: ["outcome"] as const,
    registers,
  });
  const keyFetches = new Counter({
    name: "cadenza_federation_key_fetches_total",
    help: "Fetches of other homeservers' keys, by result",
    labelNames: ["result"] as const,
    registers,
  });
  const streams = new Gauge({
    name: "cadenza_open_streams",
    help: "Open StreamSteps calls, by transport",
    labelNames: ["transport"] as const,
    registers,
  });
  // Every transport shows, at 0 before its first stream.
  for (const transport of ["connect", "grpc", "grpc-web", "hrpc"]) streams.set({ transport }, 0);

  const sources: Partial<GaugeSources> = {};
  new Gauge({
    name: "cadenza_argon2_in_flight",
    help: "argon2id hashes being computed",
    registers,
    collect() {
      this.set(sources.argon2InFlight?.() ?? 0);
    },
  });
  new Gauge({
    name: "cadenza_argon2_queued",
    help: "argon2id hashes waiting for a thread",
    registers,
    collect() {
      this.set(sources.argon2Queued?.() ?? 0);
    },
  });
  new Gauge({
    name: "cadenza_live_flows",
    help: "Auth flows neither finished nor expired (all replicas)",
    registers,
    async collect() {
      this.set((await sources.liveFlows?.()) ?? 0);
    },
  });
  new Gauge({
    name: "cadenza_account_event_consumers",
    help: "Open StreamAccountEvents streams on this process",
    registers,
    collect() {
      this.set(sources.eventConsumers?.() ?? 0);
    },
  });
  new Gauge({
    name: "cadenza_db_pool_connections",
    help: "Postgres pool connections, by state (total, idle, waiting clients); absent on PGlite",
    labelNames: ["state"] as const,
    registers,
    collect() {
      const pool = sources.pool?.();
      if (!pool) return;
      this.set({ state: "total" }, pool.total);
      this.set({ state: "idle" }, pool.idle);
      this.set({ state: "waiting" }, pool.waiting);
    },
  });

  const inc = <T extends string>(c: Counter<T>, labels: LabelValues<T>) => c.inc(labels);
  return {
    registry,
    rpc(l, seconds) {
      rpc.observe(
        {
          rpc_system: l.system,
          rpc_service: l.service,
          rpc_method: l.method,
          rpc_response_status_code: l.code,
        },
        seconds,
      );
    },
    login: (outcome) => inc(logins, { outcome }),
    registration: (outcome) => inc(registrations, { outcome }),
    limitExceeded: (limit) => inc(limits, { limit }),
    federatedLogin: (outcome) => inc(federated, { outcome }),
    keyFetch: (result) => inc(keyFetches, { result }),
    streamOpened: (transport) => streams.inc({ transport }),
    streamClosed: (transport) => streams.dec({ transport }),
    observe(gauges) {
      Object.assign(sources, gauges);
    },
    text: () => registry.metrics(),
    contentType: registry.contentType,
  };
}
