import { performance } from "node:perf_hooks";
import type { Logger } from "pino";

/**
 * One database outage, logged once: the first connection-level failure is an
 * `error` line ("database unreachable", with its cause), later failures while
 * it lasts are `debug`, and the first success afterwards is one `info` line
 * ("database reachable again") with the outage's duration. Shared by a
 * database's pool and its LISTEN connections, so an outage they both see is
 * still one outage.
 */
export interface OutageTracker {
  /** A timestamp to take when an operation starts, for {@link OutageTracker.succeeded}. */
  now(): number;
  /** A connection-level failure; `during` says what was being done ("query", "LISTEN"). */
  failed(err: unknown, during: string): void;
  /**
   * The database answered an operation that started at `startedAt` (an error
   * about the statement itself counts: the server answered). Only an operation
   * that started after the outage began ends it, so a late answer to something
   * sent before the outage does not log a recovery that did not happen.
   */
  succeeded(startedAt: number): void;
  /** Whether an outage is in progress. */
  readonly down: boolean;
  /** `err` as plain data fit for a log line (see {@link describeError}). */
  describe(err: unknown): Record<string, unknown>;
}

export type OutageLogger = Pick<Logger, "error" | "info" | "debug">;

/**
 * `secrets` are strings never to log (the password from DATABASE_URL): they
 * are cut out of every message, and only an error's type, message, code and
 * causes are logged, never the objects pg hangs on it (a client, its config).
 */
export function createOutageTracker(
  logger: OutageLogger,
  secrets: readonly string[] = [],
  now: () => number = () => performance.now(),
): OutageTracker {
  let since: number | undefined;
  const scrub = (text: string): string =>
    secrets.reduce((t, s) => (s === "" ? t : t.split(s).join("[redacted]")), text);

  return {
    now,
    get down() {
      return since !== undefined;
    },
    describe: (err) => describeError(err, scrub),
    failed(err, during) {
      // Not under `err`: pino would re-serialise it as an Error and lose its type.
      const details = { cause: describeError(err, scrub), during };
      if (since === undefined) {
        since = now();
        logger.error(details, "database unreachable");
      } else {
        logger.debug(details, "database still unreachable");
      }
    },
    succeeded(startedAt) {
      if (since === undefined || startedAt < since) return;
      const outageMs = Math.round(now() - since);
      since = undefined;
      logger.info({ outageMs }, "database reachable again");
    },
  };
}

/** An error as plain data: type, message, code and causes (AggregateError's too), scrubbed. */
export function describeError(
  err: unknown,
  scrub: (text: string) => string,
  depth = 0,
): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: scrub(String(err)) };
  const out: Record<string, unknown> = { type: err.name, message: scrub(err.message) };
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string") out.code = code;
  if (depth < 3) {
    if (err.cause !== undefined) out.cause = describeError(err.cause, scrub, depth + 1);
    if (err instanceof AggregateError) {
      out.errors = err.errors.slice(0, 4).map((e: unknown) => describeError(e, scrub, depth + 1));
    }
  }
  return out;
}
