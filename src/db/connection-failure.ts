import pg from "pg";
import { HarmonyError, hrpcErrors } from "../errors.js";

/**
 * SQLSTATEs that say the server cannot serve the statement now, though the
 * statement is fine: it is shutting down or starting (57P01–57P03), has no
 * connection slot left (53300), or cancelled the statement at
 * `statement_timeout` (57014, set to DATABASE_QUERY_TIMEOUT). Class 08
 * (connection exception) is matched by its prefix.
 */
const unavailableStates: ReadonlySet<string> = new Set([
  "57P01",
  "57P02",
  "57P03",
  "53300",
  "57014",
]);

/** Where a failure happened: getting a connection, or running a statement on one. */
export type FailurePhase = "connect" | "query";

/**
 * Whether `err`, raised by pg during `phase`, means the database is
 * unreachable or did not answer in time, rather than that the statement was
 * wrong. This is the one place that decides; everything else asks
 * {@link isDatabaseUnavailable}.
 *
 * - Any failure to get a connection counts (refused, reset, DNS, the connect
 *   timeout, the pool's acquire timeout, the server refusing the login):
 *   whatever the reason, the call cannot reach the database.
 * - On a connection, a server error counts by its SQLSTATE (above).
 * - pg reports a lost socket with Node's errno code (ECONNRESET, EPIPE, …),
 *   and its own timeouts and a connection that ended as plain `Error`s with no
 *   code, so those count. Mistakes in cadenza's own values surface as
 *   TypeError, SyntaxError or RangeError (from serialising parameters or
 *   parsing rows) and do not, so a bug is never reported as an outage.
 */
export function isConnectionFailure(err: unknown, phase: FailurePhase): boolean {
  if (phase === "connect") return true;
  if (err instanceof pg.DatabaseError) {
    const state = err.code ?? "";
    return state.startsWith("08") || unavailableStates.has(state);
  }
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && /^E[A-Z0-9_]+$/.test(code)) return true;
  return Object.getPrototypeOf(err) === Error.prototype;
}

/** The error callers get when the database is unreachable: Unavailable, `hrpc.unavailable`. */
export function databaseUnavailable(cause: unknown): HarmonyError {
  return new HarmonyError(hrpcErrors.databaseUnavailable, { cause });
}

/** Whether `err` is the db layer's {@link databaseUnavailable}. */
export function isDatabaseUnavailable(err: unknown): err is HarmonyError {
  return err instanceof HarmonyError && err.spec === hrpcErrors.databaseUnavailable;
}
