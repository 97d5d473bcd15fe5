import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { StepView } from "../src/auth/flow-machine.js";
import { createFlows, type Flows } from "../src/auth/flows.js";
import type { HubEvent, StepHub } from "../src/auth/step-hub.js";
import type { Submissions } from "../src/auth/submissions.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { rpcError } from "./helpers/errors.js";
import { newUser } from "./helpers/flow.js";

/**
 * Flows.watch, the callback watch both StreamSteps paths stand on: the log
 * first, then announcements, made up from the log whenever one may have been
 * missed. The flow is driven through the app's own flows; it is watched
 * through a second Flows on the same database whose hub can lose
 * announcements on purpose.
 */

/**
 * A hub in front of the app's that loses the announcement of one step (by
 * its number in the flow, since on Postgres announcements arrive after the
 * call that made the step has returned), and can ask for a resync.
 */
function leakyHub(inner: StepHub) {
  const listeners = new Set<(event: HubEvent) => void>();
  let drop: { seq: number; dropped: () => void } | undefined;
  const hub: StepHub = {
    subscribe(flowKey, listener) {
      listeners.add(listener);
      const unsubscribe = inner.subscribe(flowKey, (event) => {
        if (drop && event.kind === "step" && event.step.seq === drop.seq) {
          drop.dropped();
          drop = undefined;
          return;
        }
        listener(event);
      });
      return () => {
        listeners.delete(listener);
        unsubscribe();
      };
    },
    close: async () => {},
  };
  return {
    hub,
    listeners,
    /** Loses the next announcement of step `seq`; resolves once it has been lost. */
    lose(seq: number): Promise<void> {
      return new Promise((resolve) => {
        drop = { seq, dropped: resolve };
      });
    },
    resync() {
      for (const listener of listeners) listener({ kind: "resync" });
    },
  };
}

/** What a watch saw: each step's title (or "session"), and how it ended. */
function recorder() {
  const titles: string[] = [];
  let ended: ((error: unknown) => void) | undefined;
  const end = new Promise<unknown>((resolve) => {
    ended = resolve;
  });
  let endings = 0;
  let seen: (() => void) | undefined;
  return {
    titles,
    end,
    endings: () => endings,
    /** Resolves once `n` steps have arrived. */
    async steps(n: number) {
      while (titles.length < n) await new Promise<void>((resolve) => (seen = resolve));
    },
    watcher: {
      step(view: StepView) {
        titles.push(view.kind === "session" ? "session" : view.title);
        seen?.();
      },
      end(error?: unknown) {
        endings++;
        ended?.(error);
      },
    },
  };
}

describe.each(backends)("watching a flow's steps on $name", (backend) => {
  let database: TestDatabase;
  let app: TestApp;
  let leaky: ReturnType<typeof leakyHub>;
  let watched: Flows;

  beforeAll(async () => {
    database = await backend.open();
    app = await createTestApp(database.db);
    leaky = leakyHub(app.ctx.hub);
    watched = createFlows({
      db: app.ctx.db,
      clock: app.clock,
      config: app.ctx.config,
      policy: {
        registration: true,
        invites: false,
        verifyEmail: false,
        email: false,
        passkeys: false,
      },
      flowStore: app.ctx.stores.flows,
      hub: leaky.hub,
      // Steps are shown through the app's own flows; this one only watches.
      submissions: {} as Submissions,
      limits: app.ctx.limits,
      audit: app.ctx.audit,
    });
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  const flows = () => app.ctx.flows;

  it("delivers the steps shown before it, then each new one, and ends once after the session", async () => {
    const user = newUser();
    const authId = await flows().begin();
    await flows().advance(authId, { kind: "current" });
    const seen = recorder();
    const before = leaky.listeners.size;
    watched.watch(authId, seen.watcher);
    await seen.steps(1);
    await flows().advance(authId, { kind: "choice", choice: "register" });
    await seen.steps(2);
    await flows().advance(authId, {
      kind: "form",
      values: [
        { kind: "string", value: user.email },
        { kind: "string", value: user.username },
        { kind: "bytes", value: new TextEncoder().encode(user.password) },
      ],
    });
    expect(await seen.end).toBeUndefined();
    expect(seen.titles).toEqual(["initial", "register", "session"]);
    expect(seen.endings()).toBe(1);
    expect(leaky.listeners.size).toBe(before);
  });

  it("reads the log again on a gap, so a missed announcement is made up by the next", async () => {
    const authId = await flows().begin();
    const seen = recorder();
    const watch = watched.watch(authId, seen.watcher);
    await flows().advance(authId, { kind: "current" });
    await seen.steps(1);
    const lost = leaky.lose(2);
    await flows().advance(authId, { kind: "choice", choice: "login" });
    await lost;
    expect(seen.titles).toEqual(["initial"]);
    await flows().advance(authId, { kind: "back" });
    await seen.steps(3);
    expect(seen.titles).toEqual(["initial", "login", "initial"]);
    watch.stop();
  });

  it("reads the log again on a resync (the LISTEN connection came back)", async () => {
    const authId = await flows().begin();
    const seen = recorder();
    const watch = watched.watch(authId, seen.watcher);
    await flows().advance(authId, { kind: "current" });
    // Delivered, so the watch has read the log once and now waits for announcements.
    await seen.steps(1);
    const lost = leaky.lose(2);
    await flows().advance(authId, { kind: "choice", choice: "login" });
    await lost;
    // Nothing announced reached the watch: only the resync tells it to look.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(seen.titles).toEqual(["initial"]);
    leaky.resync();
    await seen.steps(2);
    expect(seen.titles).toEqual(["initial", "login"]);
    watch.stop();
  });

  it("tells nothing more once stopped, and leaves no listener behind", async () => {
    const authId = await flows().begin();
    const seen = recorder();
    const before = leaky.listeners.size;
    const watch = watched.watch(authId, seen.watcher);
    await flows().advance(authId, { kind: "current" });
    await seen.steps(1);
    watch.stop();
    expect(leaky.listeners.size).toBe(before);
    await flows().advance(authId, { kind: "choice", choice: "login" });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(seen.titles).toEqual(["initial"]);
    expect(seen.endings()).toBe(0);
  });

  it.each([
    ["an empty auth_id", "", "InvalidArgument", "h.bad-auth-id"],
    ["a malformed auth_id", "nope", "NotFound", "h.bad-auth-id"],
    ["an unknown auth_id", "C".repeat(32), "NotFound", "h.bad-auth-id"],
  ])("ends with an error for %s, never from inside watch()", async (_what, authId, code, id) => {
    const seen = recorder();
    const before = leaky.listeners.size;
    watched.watch(authId, seen.watcher);
    expect(seen.endings()).toBe(0);
    const error = await rpcError(Promise.reject(await seen.end));
    expect({ code: error.codeName, identifier: error.identifier }).toEqual({
      code,
      identifier: id,
    });
    expect(leaky.listeners.size).toBe(before);
  });
});
