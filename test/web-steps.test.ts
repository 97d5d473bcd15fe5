import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorSchema, RetryInfoSchema } from "../src/gen/hrpc/v1/hrpc_pb.js";
import { AuthStepSchema, NextStepRequestSchema } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { clientConfig } from "../web/src/client-config.js";
import { choiceRequest, fieldView, formRequest } from "../web/src/fields.js";
import { beginFlow } from "../web/src/flow.js";
import { fieldLabel, optionLabel, titleLabel } from "../web/src/labels.js";
import { fieldOfProblem, problemOf, sentence, waitText } from "../web/src/problems.js";
import { type StepView, stepView } from "../web/src/steps.js";
import { createTestApp, type TestApp } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { newUser } from "./helpers/flow.js";

/**
 * The web client's own logic, without a browser: how it reads a step, how it
 * builds a NextStep request from a form, how it reads an error, where it
 * finds its server, and how it follows a flow (against the real handlers, in
 * memory). test/web-browser.test.ts drives the page itself in Chromium.
 */

const step = (init: Parameters<typeof create<typeof AuthStepSchema>>[1]) =>
  create(AuthStepSchema, init);
const utf8 = (s: string) => new TextEncoder().encode(s);

describe("a step, as the page shows it", () => {
  it("shows a choice as its options, labelled, with can_go_back", () => {
    const view = stepView(
      step({
        canGoBack: false,
        step: {
          case: "choice",
          value: { title: "initial", options: ["login", "register", "other-options", "sso-x"] },
        },
      }),
    );
    expect(view).toEqual({
      kind: "choice",
      title: "initial",
      heading: "Welcome",
      canGoBack: false,
      options: [
        { value: "login", label: "Log in" },
        { value: "register", label: "Register" },
        { value: "other-options", label: "Other options" },
        { value: "sso-x", label: "Sso x" },
      ],
    });
  });

  it("shows a form as its fields by type, and a type it does not know as text", () => {
    const view = stepView(
      step({
        canGoBack: true,
        step: {
          case: "form",
          value: {
            title: "register",
            fields: [
              { name: "email", type: "email" },
              { name: "username", type: "text" },
              { name: "password", type: "new-password" },
              { name: "age", type: "number" },
              { name: "passkey", type: "cadenza-passkey" },
            ],
          },
        },
      }),
    );
    if (view.kind !== "form") throw new Error(`expected a form, got ${view.kind}`);
    expect(view.heading).toBe("Create an account");
    expect(view.canGoBack).toBe(true);
    expect(view.fields.map((f) => [f.name, f.kind.inputType, f.autocomplete, f.known])).toEqual([
      ["email", "email", "email", true],
      ["username", "text", "username", true],
      ["password", "password", "new-password", true],
      ["age", "number", "off", true],
      ["passkey", "text", "on", false],
    ]);
  });

  it("shows a session with its user ID in decimal, a waiting step, and an unknown one", () => {
    expect(
      stepView(
        step({
          step: {
            case: "session",
            value: { userId: 9_007_199_254_740_993n, sessionToken: "tok" },
          },
        }),
      ),
    ).toEqual({ kind: "session", userId: "9007199254740993", sessionToken: "tok" });
    expect(
      stepView(
        step({
          canGoBack: true,
          step: { case: "waiting", value: { title: "t", description: "d" } },
        }),
      ),
    ).toEqual({
      kind: "waiting",
      title: "t",
      heading: "T",
      description: "d",
      canGoBack: true,
    } satisfies StepView);
    expect(stepView(step({ canGoBack: true }))).toEqual({ kind: "unknown", canGoBack: true });
  });

  it("reads names it has no words for", () => {
    expect(titleLabel("reset-password-input-token")).toBe("Choose a new password");
    expect(titleLabel("link_github-account")).toBe("Link github account");
    expect(optionLabel("")).toBe("(unnamed)");
    expect(fieldLabel("token")).toBe("Code");
    expect(fieldLabel("constructor")).toBe("Constructor");
  });
});

describe("the request a form builds", () => {
  const fields = [
    { name: "email", type: "email" },
    { name: "username", type: "text" },
    { name: "password", type: "password" },
    { name: "new-password", type: "new-password" },
    { name: "count", type: "number" },
    { name: "other", type: "something-new" },
  ].map(fieldView);

  it("sends values in the server's order: passwords as UTF-8 bytes, numbers as int64, the rest as strings", () => {
    const req = formRequest("auth-1", fields, [
      "a@example.org",
      "alice",
      "pässwörd 🔑",
      "new one",
      "42",
      "anything",
    ]);
    // What goes on the wire, decoded again.
    const wire = fromBinary(
      NextStepRequestSchema,
      toBinary(NextStepRequestSchema, create(NextStepRequestSchema, req)),
    );
    expect(wire.authId).toBe("auth-1");
    if (wire.step.case !== "form") throw new Error("expected a form step");
    expect(wire.step.value.fields.map((f) => f.field)).toEqual([
      { case: "string", value: "a@example.org" },
      { case: "string", value: "alice" },
      { case: "bytes", value: utf8("pässwörd 🔑") },
      { case: "bytes", value: utf8("new one") },
      { case: "number", value: 42n },
      { case: "string", value: "anything" },
    ]);
  });

  it.each([
    ["-7", { case: "number", value: -7n }],
    [" 12 ", { case: "number", value: 12n }],
    ["1.5", { case: "string", value: "1.5" }],
    ["", { case: "string", value: "" }],
  ])("sends the number field %j as %o", (typed, sent) => {
    const [count] = [fieldView({ name: "count", type: "number" })];
    const req = formRequest("a", [count], [typed]);
    expect(req.step).toEqual({ case: "form", value: { fields: [{ field: sent }] } });
  });

  it("keeps passwords exactly as typed (no trimming)", () => {
    const req = formRequest("a", [fieldView({ name: "password", type: "password" })], [" pw "]);
    expect(req.step).toEqual({
      case: "form",
      value: { fields: [{ field: { case: "bytes", value: utf8(" pw ") } }] },
    });
  });

  it("refuses values that do not match the fields", () => {
    expect(() => formRequest("a", fields, ["one"])).toThrow(/6 fields but 1 values/);
  });

  it("builds a choice", () => {
    expect(choiceRequest("a", "login")).toEqual({
      authId: "a",
      step: { case: "choice", value: { choice: "login" } },
    });
  });
});

describe("an error, as the page reads it", () => {
  const harmony = (identifier: string, humanMessage: string, details = new Uint8Array()) =>
    new ConnectError(humanMessage, Code.ResourceExhausted, undefined, [
      { desc: ErrorSchema, value: { identifier, humanMessage, details } },
    ]);

  it("takes the identifier, the human message and RetryInfo's wait from the hrpc.v1.Error detail", () => {
    const retry = toBinary(RetryInfoSchema, create(RetryInfoSchema, { retryAfter: 90 }));
    expect(problemOf(harmony("hrpc.resource-exhausted", "too many failed logins", retry))).toEqual({
      code: Code.ResourceExhausted,
      identifier: "hrpc.resource-exhausted",
      message: "too many failed logins",
      retryAfterSeconds: 90,
      unreachable: false,
    });
  });

  it("falls back to the Retry-After header for the wait", () => {
    const err = new ConnectError("slow down", Code.ResourceExhausted, { "retry-after": "5" });
    expect(problemOf(err)).toMatchObject({ retryAfterSeconds: 5, identifier: undefined });
  });

  it("tells a server that could not be reached (fetch's TypeError) from one that answered", () => {
    const failed = ConnectError.from(new TypeError("Failed to fetch"));
    expect(problemOf(failed)).toMatchObject({ unreachable: true, code: Code.Unknown });
    expect(problemOf(new ConnectError("boom", Code.Unknown))).toMatchObject({ unreachable: false });
  });

  const register = [
    { name: "email", type: "email" },
    { name: "username", type: "text" },
    { name: "password", type: "new-password" },
  ];
  const reset = [
    { name: "token", type: "password" },
    { name: "new-password", type: "new-password" },
  ];
  const login = [
    { name: "email", type: "email" },
    { name: "password", type: "password" },
  ];
  it.each([
    ["h.invalid-email", register, 0],
    ["h.invalid-username", register, 1],
    ["h.invalid-password", register, 2],
    ["h.invalid-password", reset, 1],
    ["h.invalid-password", login, 1],
    ["h.invalid-single-use-token", reset, 0],
    ["h.bad-password\nh.bad-email", login, undefined],
    ["h.already-registered", register, undefined],
    ["h.missing-form", register, undefined],
    [undefined, register, undefined],
  ])("puts %j next to field %#'s index %s", (identifier, fields, index) => {
    expect(fieldOfProblem(identifier, fields)).toBe(index);
  });

  it.each([
    ["wrong email or password", "Wrong email or password."],
    ["wait 3 s before trying again.", "Wait 3 s before trying again."],
    ["Done!", "Done!"],
    ["", ""],
  ])("shows the message %j as the sentence %j", (message, shown) => {
    expect(sentence(message)).toBe(shown);
  });

  it.each([
    [1, "1 second"],
    [59.2, "1 minute"],
    [45, "45 seconds"],
    [3600, "1 hour"],
    [3601, "1 hour 1 minute"],
    [7199, "2 hours"],
    [900, "15 minutes"],
  ])("says a wait of %s s as %j", (seconds, text) => {
    expect(waitText(seconds)).toBe(text);
  });
});

describe("which server the page talks to", () => {
  it.each([
    ["https://auth.example.org/", null, "https://auth.example.org", "grpc-web"],
    [
      "https://app.example.org/login/?server=https://auth.example.org",
      null,
      "https://auth.example.org",
      "grpc-web",
    ],
    [
      "https://app.example.org/",
      "https://auth.example.org/prefix/",
      "https://auth.example.org/prefix",
      "grpc-web",
    ],
    // As built (the meta empty), the link names the server.
    [
      "https://app.example.org/?server=https://auth.example.org",
      "",
      "https://auth.example.org",
      "grpc-web",
    ],
    // A copy that names its server is pinned to it: a link cannot move it.
    [
      "https://app.example.org/?server=https://attacker.example",
      "https://meta.example.org",
      "https://meta.example.org",
      "grpc-web",
    ],
    ["http://127.0.0.1:2289/?protocol=connect", "  ", "http://127.0.0.1:2289", "connect"],
  ])("%s with meta %j: %s over %s", (page, meta, server, protocol) => {
    expect(clientConfig(page, meta)).toEqual({ ok: true, config: { server, protocol } });
  });

  it.each([
    ["https://a.example.org/?server=javascript:alert(1)", /not a server address/],
    ["https://a.example.org/?server=auth.example.org", /not a server address/],
    ["https://a.example.org/?server=https://u:p@auth.example.org", /not a server address/],
    ["https://a.example.org/?protocol=grpc", /not grpc-web or connect/],
  ])("refuses %s", (page, problem) => {
    const result = clientConfig(page, null);
    expect(result.ok).toBe(false);
    expect(!result.ok && result.problem).toMatch(problem);
  });
});

describe("following a flow (the page's driver, on the real handlers)", () => {
  let database: TestDatabase;
  let app: TestApp;
  beforeAll(async () => {
    database = await pglite.open();
    app = await createTestApp(database.db);
  });
  afterAll(async () => {
    await app?.close();
    await database?.close();
  });

  /** Steps as they arrive, each awaited in turn. */
  function recorder() {
    let taken = 0;
    const views: StepView[] = [];
    const waiting: ((v: StepView) => void)[] = [];
    let ended: (problem: unknown) => void = () => {};
    const end = new Promise<unknown>((resolve) => {
      ended = resolve;
    });
    return {
      handlers: {
        onStep(view: StepView) {
          views.push(view);
          waiting.shift()?.(view);
        },
        onEnd: (problem: unknown) => ended(problem),
      },
      next(): Promise<StepView> {
        const ready = views.length > taken ? views[taken] : undefined;
        taken++;
        return ready ? Promise.resolve(ready) : new Promise((resolve) => waiting.push(resolve));
      },
      end,
    };
  }
  it("renders from the stream: the first step, a choice, a rejected form, back, a session", async () => {
    const r = recorder();
    const flow = await beginFlow(app.client, r.handlers);
    expect(await r.next()).toMatchObject({ kind: "choice", title: "initial", canGoBack: false });
    await flow.choose("register");
    const form = await r.next();
    if (form.kind !== "form") throw new Error(`expected a form, got ${form.kind}`);
    const user = newUser();
    // A refused form is the caller's error to show; the stream shows nothing new.
    await expect(flow.submit(form.fields, [user.email, user.username, "short"])).rejects.toThrow(
      /password/,
    );
    await flow.back();
    expect(await r.next()).toMatchObject({ kind: "choice", title: "initial" });
    await flow.choose("register");
    const again = await r.next();
    if (again.kind !== "form") throw new Error(`expected a form, got ${again.kind}`);
    await flow.submit(again.fields, [user.email, user.username, user.password]);
    const session = await r.next();
    expect(session).toMatchObject({ kind: "session", userId: expect.stringMatching(/^\d+$/) });
    flow.close();
  });

  it("reports a choice the server does not offer, and goes on", async () => {
    const r = recorder();
    const flow = await beginFlow(app.client, r.handlers);
    await r.next();
    const err = await flow.choose("nope").catch((e: unknown) => e);
    expect(problemOf(err)).toMatchObject({
      code: Code.InvalidArgument,
      identifier: "h.bad-auth-choice",
    });
    await flow.choose("login");
    expect(await r.next()).toMatchObject({ kind: "form", title: "login", canGoBack: true });
    flow.close();
  });
});

describe("the passkey step, as the page shows and answers it", () => {
  it("knows cadenza's own field type: no input, its value the assertion's JSON as UTF-8 bytes", () => {
    const view = stepView(
      create(AuthStepSchema, {
        canGoBack: true,
        step: {
          case: "form",
          value: {
            title: "passkey",
            fields: [{ name: "assertion", type: "cadenza.passkey-assertion" }],
          },
        },
      }),
    );
    expect(view).toMatchObject({ kind: "form", heading: "Sign in with a passkey" });
    const [field] = view.kind === "form" ? view.fields : [];
    expect(field).toMatchObject({ known: true, kind: { ceremony: "passkey" } });
    expect(fieldLabel("assertion")).toBe("Passkey");
    expect(optionLabel("passkey")).toBe("Sign in with a passkey");
    const json = '{"id":"abc","type":"public-key"}';
    const req = create(NextStepRequestSchema, formRequest("a", field ? [field] : [], [json]));
    const value = req.step.case === "form" ? req.step.value.fields[0]?.field : undefined;
    expect(value?.case).toBe("bytes");
    expect(new TextDecoder().decode(value?.value as Uint8Array)).toBe(json);
  });
});
