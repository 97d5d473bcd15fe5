import pg from "pg";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import {
  databaseUnavailable,
  isConnectionFailure,
  isDatabaseUnavailable,
} from "../src/db/connection-failure.js";
import { createOutageTracker } from "../src/db/outage-tracker.js";
import { hrpcErrors } from "../src/errors.js";

function serverError(code: string): pg.DatabaseError {
  const err = new pg.DatabaseError(`server says ${code}`, 0, "error");
  err.code = code;
  return err;
}

function systemError(code: string): Error {
  return Object.assign(new Error(`read ${code}`), { code, errno: -104, syscall: "read" });
}

describe("isConnectionFailure", () => {
  it.each([
    ["08006 connection failure", serverError("08006"), true],
    ["08P01 protocol violation", serverError("08P01"), true],
    ["57P01 admin shutdown", serverError("57P01"), true],
    ["57P03 cannot connect now", serverError("57P03"), true],
    ["53300 too many connections", serverError("53300"), true],
    ["57014 statement timeout", serverError("57014"), true],
    ["23505 unique violation", serverError("23505"), false],
    ["42P01 undefined table", serverError("42P01"), false],
    ["40001 serialization failure", serverError("40001"), false],
    ["ECONNRESET", systemError("ECONNRESET"), true],
    ["EPIPE", systemError("EPIPE"), true],
    ["pg's query read timeout", new Error("Query read timeout"), true],
    ["pg's lost connection", new Error("Connection terminated unexpectedly"), true],
    ["a TypeError serialising a parameter", new TypeError("Converting circular structure"), false],
    ["a SyntaxError parsing a row", new SyntaxError("Cannot convert x to a BigInt"), false],
    ["not an Error", "boom", false],
  ] as const)("on a connection: %s → %s", (_what, err, expected) => {
    expect(isConnectionFailure(err, "query")).toBe(expected);
  });

  it.each([
    new Error("timeout exceeded when trying to connect"),
    serverError("28P01"),
    new TypeError("Invalid URL"),
  ])("getting a connection: every failure counts (%s)", (err) => {
    expect(isConnectionFailure(err, "connect")).toBe(true);
  });

  it("wraps as Unavailable with hrpc.unavailable, the driver's error kept only as the cause", () => {
    const cause = systemError("ECONNREFUSED");
    const err = databaseUnavailable(cause);
    expect(isDatabaseUnavailable(err)).toBe(true);
    expect(err.spec).toBe(hrpcErrors.databaseUnavailable);
    expect({ code: err.code, identifier: err.identifier }).toEqual({
      code: hrpcErrors.databaseUnavailable.code,
      identifier: "hrpc.unavailable",
    });
    expect(err.message).not.toContain("ECONNREFUSED");
    expect(err.cause).toBe(cause);
  });
});

describe("the outage tracker", () => {
  function tracked() {
    const lines: { level: string; obj: Record<string, unknown>; msg: string }[] = [];
    const logger = pino(
      {
        level: "debug",
        base: null,
        timestamp: false,
        formatters: { level: (label) => ({ level: label }) },
      },
      {
        write(line: string) {
          const { level, msg, ...obj } = JSON.parse(line) as Record<string, unknown>;
          lines.push({ level: String(level), obj, msg: String(msg) });
        },
      },
    );
    let clock = 1_000;
    const tracker = createOutageTracker(logger, ["s3cret", "s%33cret"], () => clock);
    return { tracker, lines, advance: (ms: number) => (clock += ms) };
  }

  it("logs the first failure as error, the rest as debug, and the first later success as info with the duration", () => {
    const { tracker, lines, advance } = tracked();
    const beforeOutage = tracker.now();
    advance(10);
    tracker.failed(systemError("ECONNREFUSED"), "connect");
    advance(500);
    tracker.failed(new Error("Query read timeout"), "query");
    // An answer to something sent before the outage began is no recovery.
    tracker.succeeded(beforeOutage);
    expect(tracker.down).toBe(true);
    const afterOutage = tracker.now();
    advance(1_490);
    tracker.succeeded(afterOutage);
    tracker.succeeded(tracker.now());
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ["error", "database unreachable"],
      ["debug", "database still unreachable"],
      ["info", "database reachable again"],
    ]);
    expect(lines[0]?.obj).toMatchObject({
      during: "connect",
      cause: { type: "Error", code: "ECONNREFUSED", message: "read ECONNREFUSED" },
    });
    expect(lines[2]?.obj).toEqual({ outageMs: 1_990 });
    expect(tracker.down).toBe(false);
  });

  it("never logs a secret, in a message or in a cause, nor what pg hangs on an error", () => {
    const { tracker, lines } = tracked();
    const err = Object.assign(
      new Error("could not connect as postgres:s3cret@db", {
        cause: new Error("while s%33cret was tried"),
      }),
      { client: { password: "s3cret" } },
    );
    tracker.failed(err, "connect");
    const logged = JSON.stringify(lines);
    expect(logged).not.toContain("s3cret");
    expect(logged).not.toContain("s%33cret");
    expect(lines[0]?.obj.cause).toEqual({
      type: "Error",
      message: "could not connect as postgres:[redacted]@db",
      cause: { type: "Error", message: "while [redacted] was tried" },
    });
  });
});
