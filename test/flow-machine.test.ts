import { describe, expect, it } from "vitest";
import {
  advance,
  awaitSecondFactor,
  type FlowInput,
  type FlowPolicy,
  type FlowRecord,
  type FlowState,
  initialState,
} from "../src/auth/flow-machine.js";
import { HarmonyError } from "../src/errors.js";

const open: FlowPolicy = {
  registration: true,
  invites: false,
  verifyEmail: false,
  email: false,
  passkeys: false,
};
const closed: FlowPolicy = {
  registration: false,
  passkeys: false,
  invites: false,
  verifyEmail: false,
  email: false,
};
const now = 1_000_000;
const flow = (state: FlowState, extra: Partial<FlowRecord> = {}): FlowRecord => ({
  state,
  expiresAt: now + 60_000,
  done: false,
  ...extra,
});
const at = (...stack: FlowState["stack"]): FlowState => ({ stack });
const utf8 = (s: string) => ({ kind: "bytes" as const, value: new TextEncoder().encode(s) });
const str = (value: string) => ({ kind: "string" as const, value });

function step(record: FlowRecord, input: FlowInput, policy = open) {
  const outcome = advance(record, input, now, policy);
  if (outcome.kind !== "step") throw new Error("expected a step");
  return outcome;
}

function rejection(fn: () => unknown): { identifier: string; code: number; message: string } {
  try {
    fn();
  } catch (err) {
    if (err instanceof HarmonyError) {
      return { identifier: err.identifier, code: err.code, message: err.message };
    }
    throw err;
  }
  throw new Error("expected a HarmonyError");
}

describe("flow machine", () => {
  it("shows the initial choice for the current step", () => {
    expect(step(flow(initialState), { kind: "current" }).step).toEqual({
      kind: "choice",
      title: "initial",
      options: ["login", "register", "other-options"],
      canGoBack: false,
    });
  });

  it("does not offer register when registration is closed", () => {
    const view = step(flow(initialState), { kind: "current" }, closed).step;
    expect(view).toMatchObject({ options: ["login", "other-options"] });
    expect(
      rejection(() =>
        advance(flow(initialState), { kind: "choice", choice: "register" }, now, closed),
      ),
    ).toMatchObject({ identifier: "h.bad-auth-choice" });
  });

  it.each([
    [
      "login",
      {
        kind: "form",
        title: "login",
        canGoBack: true,
        fields: [
          { name: "email", type: "email" },
          { name: "password", type: "password" },
        ],
      },
    ],
    [
      "register",
      {
        kind: "form",
        title: "register",
        canGoBack: true,
        fields: [
          { name: "email", type: "email" },
          { name: "username", type: "text" },
          { name: "password", type: "new-password" },
        ],
      },
    ],
    [
      "other-options",
      { kind: "choice", title: "other-options", options: ["change-password"], canGoBack: true },
    ],
  ])("choice %s shows its step", (choice, view) => {
    const outcome = step(flow(initialState), { kind: "choice", choice });
    expect(outcome.step).toEqual(view);
    expect(outcome.state.stack).toEqual(["initial", choice]);
  });

  it("StepBack pops a step that can go back, and keeps one that cannot", () => {
    expect(step(flow(at("initial", "login")), { kind: "back" }).state).toEqual(at("initial"));
    const stay = step(flow(initialState), { kind: "back" });
    expect(stay.state).toEqual(initialState);
    expect(stay.step).toMatchObject({ title: "initial", canGoBack: false });
  });

  it("turns a login form into a submission, reading values by position", () => {
    const outcome = advance(
      flow(at("initial", "login")),
      { kind: "form", values: [str("a@b.c"), utf8("sekrit-pass")] },
      now,
      open,
    );
    expect(outcome).toEqual({
      kind: "submit",
      submission: { kind: "login", email: "a@b.c", password: "sekrit-pass" },
      next: "session",
    });
  });

  it("accepts a password sent as a string and a registration form", () => {
    const outcome = advance(
      flow(at("initial", "register")),
      { kind: "form", values: [str("a@b.c"), str("name"), str("pw as string")] },
      now,
      open,
    );
    expect(outcome).toEqual({
      kind: "submit",
      submission: {
        kind: "register",
        email: "a@b.c",
        username: "name",
        password: "pw as string",
        invite: undefined,
      },
      next: "session",
    });
  });

  describe.each<[string, FlowState, FlowInput, string, RegExp]>([
    [
      "a choice not offered",
      initialState,
      { kind: "choice", choice: "admin" },
      "h.bad-auth-choice",
      /not offered/,
    ],
    [
      "a choice sent to a form",
      at("initial", "login"),
      { kind: "choice", choice: "login" },
      "h.bad-auth-choice",
      /is a form/,
    ],
    [
      "a form sent to a choice",
      initialState,
      { kind: "form", values: [] },
      "h.bad-auth-choice",
      /is a choice/,
    ],
    [
      "a missing field",
      at("initial", "login"),
      { kind: "form", values: [str("a@b.c")] },
      "h.missing-form",
      /2 fields/,
    ],
    [
      "an extra field",
      at("initial", "login"),
      { kind: "form", values: [str("a@b.c"), utf8("x"), str("y")] },
      "h.missing-form",
      /3 were sent/,
    ],
    [
      "a number for an email",
      at("initial", "login"),
      { kind: "form", values: [{ kind: "number", value: 1n }, utf8("x")] },
      "h.missing-form",
      /email\) must be a string/,
    ],
    [
      "bytes for an email",
      at("initial", "login"),
      { kind: "form", values: [utf8("a@b.c"), utf8("x")] },
      "h.missing-form",
      /email/,
    ],
    [
      "an unset value",
      at("initial", "login"),
      { kind: "form", values: [str("a@b.c"), { kind: "unset" }] },
      "h.missing-form",
      /no value/,
    ],
    [
      "a password that is not UTF-8",
      at("initial", "login"),
      {
        kind: "form",
        values: [str("a@b.c"), { kind: "bytes", value: new Uint8Array([0xff, 0xfe]) }],
      },
      "h.missing-form",
      /UTF-8/,
    ],
  ])("rejects %s", (_name, state, input, identifier, message) => {
    it(`with ${identifier}`, () => {
      const error = rejection(() => advance(flow(state), input, now, open));
      expect(error.identifier).toBe(identifier);
      expect(error.message).toMatch(message);
    });
  });

  it("refuses expired and spent flows with h.bad-auth-id", () => {
    expect(
      rejection(() =>
        advance(flow(initialState, { expiresAt: now }), { kind: "current" }, now, open),
      ),
    ).toMatchObject({ identifier: "h.bad-auth-id", message: expect.stringMatching(/expired/) });
    expect(
      rejection(() => advance(flow(initialState, { done: true }), { kind: "current" }, now, open)),
    ).toMatchObject({ identifier: "h.bad-auth-id", message: expect.stringMatching(/complete/) });
  });

  describe("the second-factor steps", () => {
    const pending = { userId: 42n, epoch: 0, completes: { kind: "login" } } as const;
    const onCode = awaitSecondFactor(at("initial", "login"), pending);

    it("waits on the totp form [code:text], which can go back", () => {
      expect(onCode).toEqual({ stack: ["initial", "login", "totp"], secondFactor: pending });
      expect(step(flow(onCode), { kind: "current" }).step).toEqual({
        kind: "form",
        title: "totp",
        fields: [{ name: "code", type: "text" }],
        canGoBack: true,
      });
    });

    it("turns either code form into a second-factor submission that ends in a session", () => {
      const recovery = step(flow(onCode), { kind: "choice", choice: "recovery-code" }).state;
      expect(recovery).toEqual({
        stack: [...onCode.stack, "recovery-code"],
        secondFactor: pending,
      });
      for (const state of [onCode, recovery]) {
        expect(advance(flow(state), { kind: "form", values: [str("123 456")] }, now, open)).toEqual(
          {
            kind: "submit",
            submission: { kind: "second-factor", code: "123 456", pending },
            next: "session",
          },
        );
      }
    });

    it("forgets the pending login when StepBack leaves the code steps", () => {
      const recovery = step(flow(onCode), { kind: "choice", choice: "recovery-code" }).state;
      expect(step(flow(recovery), { kind: "back" }).state).toEqual(onCode);
      expect(step(flow(onCode), { kind: "back" }).state).toEqual(at("initial", "login"));
    });

    it("refuses other choices and the recovery choice elsewhere", () => {
      expect(
        rejection(() => advance(flow(onCode), { kind: "choice", choice: "login" }, now, open)),
      ).toMatchObject({ identifier: "h.bad-auth-choice", message: /recovery-code/ });
      expect(
        rejection(() =>
          advance(
            flow(at("initial", "login")),
            { kind: "choice", choice: "recovery-code" },
            now,
            open,
          ),
        ),
      ).toMatchObject({ identifier: "h.bad-auth-choice" });
    });
  });
});
