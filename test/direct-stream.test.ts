import type { DescMethod } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { authErrors } from "../src/auth/auth-errors.js";
import type { AuthenticatedSession } from "../src/auth/sessions.js";
import { HarmonyError, hrpcErrors } from "../src/errors.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import {
  createDirectStreams,
  type DirectImplementation,
  type DirectStreamOptions,
} from "../src/server/rpc/direct-stream.js";
import { type CallObserver, type Failure, newCall } from "../src/server/rpc/failure.js";

/**
 * The rules the direct stream path applies around an implementation, the
 * ones the interceptors apply in Connect's pipeline: the method's session
 * rule, the deadline, shutdown, a client going away, and the error boundary
 * (one failure per call, normalised and logged once; the end observed once).
 * The protocol suites (test/stream-paths.test.ts and the ones parameterised
 * over both paths) check the same against Connect's handler end to end.
 */

const session = { userId: 7n, sessionId: "s-1" } as AuthenticatedSession;

function harness(options: Partial<DirectStreamOptions> = {}) {
  const lines: Record<string, unknown>[] = [];
  const observed: Parameters<CallObserver>[0][] = [];
  const shutdown = new AbortController();
  const streams = createDirectStreams({
    logger: pino({ level: "debug" }, { write: (l: string) => lines.push(JSON.parse(l)) }),
    sessions: {
      authenticate: async (token) => {
        if (token === "good-token") return session;
        throw new HarmonyError(authErrors.blankSession);
      },
    },
    shutdownSignal: shutdown.signal,
    observe: (end) => observed.push(end),
    ...options,
  });
  return { streams, lines, observed, shutdown };
}

/** A sink that records what it was given, and resolves `ended` with the failure (or "ok"). */
function sink() {
  const messages: string[] = [];
  let done: (f: Failure | "ok") => void = () => {};
  const ended = new Promise<Failure | "ok">((resolve) => (done = resolve));
  let ends = 0;
  return {
    messages,
    ended,
    ends: () => ends,
    sink: {
      message: (m: string) => messages.push(m),
      end: (f: Failure | undefined) => {
        ends++;
        done(f ?? "ok");
      },
    },
  };
}

/** An implementation the test drives: what it was started with, and its output. */
function implementation() {
  const state: {
    session?: AuthenticatedSession | undefined;
    started: boolean;
    stopped: boolean;
    out?: Parameters<DirectImplementation<string>>[1];
  } = { started: false, stopped: false };
  const start: DirectImplementation<string> = (s, out) => {
    state.started = true;
    state.session = s;
    state.out = out;
    return {
      stop: () => {
        state.stopped = true;
      },
    };
  };
  return { state, start };
}

const header = (values: Record<string, string> = {}) => ({
  get: (name: string) => values[name.toLowerCase()] ?? null,
});

const call = (
  method: DescMethod = AuthService.method.streamSteps,
  values: Record<string, string> = {},
) => ({
  method,
  record: newCall("connect", "192.0.2.1"),
  header: header(values),
  deadline: undefined as number | undefined,
});

describe("the direct stream path's rules", () => {
  it("streams an implementation's messages, then its clean end, observed once as OK", async () => {
    const { streams, observed } = harness();
    const impl = implementation();
    const s = sink();
    streams.serve(call(), impl.start, s.sink);
    await expect.poll(() => impl.state.started).toBe(true);
    impl.state.out?.message("one");
    impl.state.out?.message("two");
    impl.state.out?.end();
    impl.state.out?.message("late");
    expect(await s.ended).toBe("ok");
    expect(s.messages).toEqual(["one", "two"]);
    expect(observed).toEqual([expect.objectContaining({ code: "OK", protocol: "connect" })]);
    expect(streams.open).toBe(0);
  });

  it("authenticates a method whose Harmony option requires it, and runs nothing without a session", async () => {
    const { streams, observed } = harness();
    const refused = implementation();
    const s = sink();
    streams.serve(call(AuthService.method.checkLoggedIn), refused.start, s.sink);
    expect(await s.ended).toMatchObject({ spec: authErrors.blankSession });
    expect(refused.state.started).toBe(false);
    expect(observed.at(-1)?.code).toBe("Unauthenticated");

    const allowed = implementation();
    streams.serve(
      call(AuthService.method.checkLoggedIn, { authorization: "Bearer good-token" }),
      allowed.start,
      sink().sink,
    );
    await expect.poll(() => allowed.state.started).toBe(true);
    expect(allowed.state.session).toBe(session);
  });

  it("gives a method that requires no session none, whatever the client sends", async () => {
    const { streams } = harness();
    const impl = implementation();
    streams.serve(
      call(AuthService.method.streamSteps, { authorization: "good-token" }),
      impl.start,
      sink().sink,
    );
    await expect.poll(() => impl.state.started).toBe(true);
    expect(impl.state.session).toBeUndefined();
  });

  it("ends a call at its deadline with DeadlineExceeded, and stops the implementation", async () => {
    const { streams } = harness();
    const impl = implementation();
    const s = sink();
    streams.serve({ ...call(), deadline: performance.now() + 50 }, impl.start, s.sink);
    const failure = await s.ended;
    expect(failure).toMatchObject({ spec: hrpcErrors.deadlineExceeded });
    expect(impl.state.stopped).toBe(true);
  });

  it("ends every open call with the shutdown's reason, and a call that comes after at once", async () => {
    const { streams, shutdown } = harness();
    const impls = [implementation(), implementation()];
    const sinks = [sink(), sink()];
    for (const [i, impl] of impls.entries()) {
      streams.serve(call(), impl.start, sinks[i]?.sink ?? sink().sink);
    }
    await expect.poll(() => impls.every((i) => i.state.started)).toBe(true);
    expect(streams.open).toBe(2);
    shutdown.abort(new HarmonyError(hrpcErrors.unavailable));
    for (const s of sinks) expect(await s.ended).toMatchObject({ spec: hrpcErrors.unavailable });
    expect(impls.every((i) => i.state.stopped)).toBe(true);

    const late = implementation();
    const s = sink();
    streams.serve(call(), late.start, s.sink);
    expect(await s.ended).toMatchObject({ spec: hrpcErrors.unavailable });
    expect(late.state.started).toBe(false);
  });

  it("records a client that went away as canceled, at debug, and answers nothing after it", async () => {
    const { streams, lines, observed } = harness();
    const impl = implementation();
    const s = sink();
    const served = streams.serve(call(), impl.start, s.sink);
    await expect.poll(() => impl.state.started).toBe(true);
    served.cancel();
    served.cancel();
    expect(await s.ended).toMatchObject({ spec: hrpcErrors.canceled });
    impl.state.out?.end(new Error("too late to matter"));
    expect(s.ends()).toBe(1);
    expect(impl.state.stopped).toBe(true);
    expect(lines.filter((l) => (l.level as number) >= 40)).toEqual([]);
    expect(observed.map((o) => o.code)).toEqual(["Canceled"]);
  });

  it.each([
    [
      "a HarmonyError keeps its identifier",
      () => new HarmonyError(authErrors.unknownAuthId),
      "h.bad-auth-id",
      Code.NotFound,
      "debug",
    ],
    [
      "anything else is Internal, logged at error with its cause",
      () => new Error("the database fell over"),
      "hrpc.internal-server-error",
      Code.Internal,
      "error",
    ],
  ])("normalises what an implementation ends with: %s", async (_what, error, id, code, level) => {
    const { streams, lines } = harness();
    const s = sink();
    streams.serve(
      call(),
      (_session, out) => {
        queueMicrotask(() => out.end(error()));
        return { stop: () => {} };
      },
      s.sink,
    );
    const failure = (await s.ended) as Failure;
    expect({ identifier: failure.spec.identifier, code: failure.spec.code }).toEqual({
      identifier: id,
      code,
    });
    const logged = lines.filter((l) => l.identifier === id);
    expect(logged).toHaveLength(1);
    expect(logged[0]?.level).toBe({ debug: 20, error: 50 }[level]);
  });

  it("answers an implementation that throws instead of starting (a limit) with its error", async () => {
    const { streams } = harness();
    const s = sink();
    streams.serve(
      call(),
      () => {
        throw new HarmonyError(hrpcErrors.unavailable);
      },
      s.sink,
    );
    expect(await s.ended).toMatchObject({ spec: hrpcErrors.unavailable });
    expect(streams.open).toBe(0);
  });
});
