import { type ErrorSpec, HarmonyError } from "../errors.js";
import { authErrors } from "./auth-errors.js";

/**
 * The auth flow as a pure state machine (diagram: flow-machine.md). It takes a
 * flow, what the client sent and the time, and returns the next state and the
 * step to show, or a submission for the caller to carry out (checking a
 * password, creating an account); it never does I/O itself.
 */

/** The steps a flow can stand on; each is shown with its name as title. */
export type StepName =
  | "initial"
  | "login"
  | "register"
  | "register-input-token"
  | "other-options"
  | "reset-password-send-token"
  | "reset-password-input-token"
  | "delete-user-send-token"
  | "delete-user-input-token"
  | "change-password"
  | "totp"
  | "recovery-code"
  | "passkey"
  | "success";

export const stepNames: readonly StepName[] = [
  "initial",
  "login",
  "register",
  "register-input-token",
  "other-options",
  "reset-password-send-token",
  "reset-password-input-token",
  "delete-user-send-token",
  "delete-user-input-token",
  "change-password",
  "totp",
  "recovery-code",
  "passkey",
  "success",
];

/** The steps that ask for a second-factor code. */
const secondFactorSteps: ReadonlySet<StepName> = new Set(["totp", "recovery-code"]);

/**
 * A password login that passed and waits for its second-factor code: whose
 * account, and what to do once the code is right.
 */
export interface PendingSecondFactor {
  readonly userId: bigint;
  /** The account's credential epoch when its password passed: a reset or change since voids it. */
  readonly epoch: number;
  readonly completes:
    | { readonly kind: "login" }
    /** A change-password, with its new password already hashed (argon2id). */
    | { readonly kind: "change-password"; readonly passwordHash: string }
    /** A deletion whose emailed code was right (and is spent): the account goes with the code. */
    | { readonly kind: "delete-user" };
}

/**
 * What a client announced it can do at BeginAuth, beyond Harmony's generic
 * steps (and the server agreed to offer it): `passkey`, a passkey sign-in.
 * Generic Harmony clients announce nothing and see only Harmony's steps.
 */
export type ClientFeature = "passkey";

/** A flow's state: the steps taken, the current one last. */
export interface FlowState {
  readonly stack: readonly StepName[];
  /** Set exactly while the flow stands on a second-factor step. */
  readonly secondFactor?: PendingSecondFactor;
  /** Set when the client announced features the server offers it; kept for the flow's life. */
  readonly features?: readonly ClientFeature[];
}

export interface FlowRecord {
  readonly state: FlowState;
  readonly expiresAt: number;
  readonly done: boolean;
}

/**
 * Harmony's field types, and cadenza's own `cadenza.passkey-assertion`: the
 * JSON of a WebAuthn assertion (as UTF-8 bytes), shown only to clients that
 * announced the `passkey` feature.
 */
export type FormFieldType =
  | "email"
  | "password"
  | "new-password"
  | "text"
  | "number"
  | "cadenza.passkey-assertion";

export interface FormFieldSpec {
  readonly name: string;
  readonly type: FormFieldType;
}

/** A step as the client sees it, independent of the wire format. */
export type StepView =
  | {
      readonly kind: "choice";
      readonly title: string;
      readonly options: readonly string[];
      readonly canGoBack: boolean;
    }
  | {
      readonly kind: "form";
      readonly title: string;
      readonly fields: readonly FormFieldSpec[];
      readonly canGoBack: boolean;
    }
  | { readonly kind: "session"; readonly userId: bigint; readonly sessionToken: string };

/** One value of a submitted form, as it arrived. */
export type FormValue =
  | { readonly kind: "bytes"; readonly value: Uint8Array }
  | { readonly kind: "string"; readonly value: string }
  | { readonly kind: "number"; readonly value: bigint }
  | { readonly kind: "unset" };

export type FlowInput =
  | { readonly kind: "current" }
  | { readonly kind: "choice"; readonly choice: string }
  | { readonly kind: "form"; readonly values: readonly FormValue[] }
  | { readonly kind: "back" };

/** What the server offers; fixed by configuration. */
export interface FlowPolicy {
  /** Whether `register` is offered (REGISTRATION=open or invite). */
  readonly registration: boolean;
  /** REGISTRATION=invite: `register` takes an invite code. */
  readonly invites: boolean;
  /** EMAIL_VERIFICATION=required: an account exists only once its email's code is entered. */
  readonly verifyEmail: boolean;
  /** SMTP is configured: password reset and account deletion by email code are offered. */
  readonly email: boolean;
  /** PASSKEYS=on (with an RP ID): the passkey option, for flows whose client announced it. */
  readonly passkeys: boolean;
}

/** What a submitted form asks the caller to do. */
export type Submission =
  | { readonly kind: "login"; readonly email: string; readonly password: string }
  | {
      readonly kind: "register";
      readonly email: string;
      readonly username: string;
      readonly password: string;
      /** The invite code, under REGISTRATION=invite. */
      readonly invite: string | undefined;
    }
  /** The code sent to the email given at `register`. */
  | { readonly kind: "verify-email"; readonly code: string }
  /** A passkey sign-in: the browser's assertion, as JSON. */
  | { readonly kind: "passkey"; readonly assertion: string }
  /** A TOTP or recovery code for a login whose password was right. */
  | {
      readonly kind: "second-factor";
      readonly code: string;
      readonly pending: PendingSecondFactor;
    }
  | { readonly kind: "send-code"; readonly purpose: CodePurpose; readonly email: string }
  | { readonly kind: "reset-password"; readonly code: string; readonly newPassword: string }
  | { readonly kind: "delete-user"; readonly code: string }
  | {
      readonly kind: "change-password";
      readonly email: string;
      readonly password: string;
      readonly newPassword: string;
    };

/** What an email code is for. */
export type CodePurpose = "verify-email" | "reset-password" | "delete-user";

/**
 * A submission and where the flow stands once it succeeded: the state to
 * show (a code form, `success`), or `session` for the end of the flow.
 */
export type Outcome =
  | { readonly kind: "step"; readonly state: FlowState; readonly step: StepView }
  | {
      readonly kind: "submit";
      readonly submission: Submission;
      readonly next: FlowState | "session";
    };

const f = (name: string, type: FormFieldType): FormFieldSpec => ({ name, type });

/** The state of a fresh flow. */
export const initialState: FlowState = Object.freeze({
  stack: Object.freeze(["initial"] as const),
});

/** A fresh flow's state for a client that announced `features` the server offers it. */
export function initialStateFor(features: readonly ClientFeature[]): FlowState {
  return features.length === 0
    ? initialState
    : Object.freeze({ stack: initialState.stack, features: Object.freeze([...features]) });
}

/** `state` on another stack, keeping what the client announced (and nothing else). */
function onStack(state: FlowState, stack: readonly StepName[]): FlowState {
  return state.features ? { stack, features: state.features } : { stack };
}

/** The step a choice's option leads to. */
const optionTarget: Readonly<Record<string, StepName>> = {
  login: "login",
  register: "register",
  "other-options": "other-options",
  "reset-password": "reset-password-send-token",
  "delete-user": "delete-user-send-token",
  "change-password": "change-password",
  "back-to-initial": "initial",
  passkey: "passkey",
};

/** The choice the `totp` form also takes: a form for a recovery code instead. */
const RECOVERY_CHOICE = "recovery-code";

function current(state: FlowState): StepName {
  return state.stack[state.stack.length - 1] ?? "initial";
}

function canGoBack(state: FlowState): boolean {
  return state.stack.length > 1;
}

/** Whether the flow offers a passkey sign-in: configured, and announced by its client. */
const offersPasskey = (state: FlowState, policy: FlowPolicy): boolean =>
  policy.passkeys && state.features?.includes("passkey") === true;

function choiceOptions(
  step: StepName,
  policy: FlowPolicy,
  state: FlowState,
): readonly string[] | undefined {
  switch (step) {
    case "initial":
      return [
        "login",
        ...(offersPasskey(state, policy) ? ["passkey"] : []),
        ...(policy.registration ? ["register"] : []),
        "other-options",
      ];
    case "other-options":
      return policy.email
        ? ["reset-password", "delete-user", "change-password"]
        : ["change-password"];
    case "success":
      return ["back-to-initial"];
    default:
      return undefined;
  }
}

function formFields(step: StepName, policy: FlowPolicy): readonly FormFieldSpec[] | undefined {
  switch (step) {
    case "login":
      return [f("email", "email"), f("password", "password")];
    case "register":
      return [
        f("email", "email"),
        f("username", "text"),
        f("password", "new-password"),
        ...(policy.invites ? [f("token", "text")] : []),
      ];
    case "register-input-token":
    case "delete-user-input-token":
      return [f("token", "password")];
    case "reset-password-send-token":
    case "delete-user-send-token":
      return [f("email", "email")];
    case "reset-password-input-token":
      return [f("token", "password"), f("new-password", "new-password")];
    case "change-password":
      return [f("email", "email"), f("password", "password"), f("new-password", "new-password")];
    case "totp":
    case "recovery-code":
      return [f("code", "text")];
    case "passkey":
      return [f("assertion", "cadenza.passkey-assertion")];
    default:
      return undefined;
  }
}

/** The step a state stands on, as the client is shown it. */
export function viewOf(state: FlowState, policy: FlowPolicy): StepView {
  const step = current(state);
  const back = canGoBack(state);
  const options = choiceOptions(step, policy, state);
  if (options !== undefined) return { kind: "choice", title: step, options, canGoBack: back };
  const fields = formFields(step, policy) ?? [];
  return { kind: "form", title: step, fields, canGoBack: back };
}

/**
 * Where a login (or change-password) goes when its password was right and
 * the account has a second factor: the `totp` form, remembering the login.
 * The caller decides that a factor is needed (it takes a lookup); where the
 * flow goes is decided here.
 */
export function awaitSecondFactor(state: FlowState, pending: PendingSecondFactor): FlowState {
  return { ...onStack(state, [...state.stack, "totp"]), secondFactor: pending };
}

/** Where a reset or deletion leaves the flow: `success`, with no way back into it. */
export function finishedState(state: FlowState): FlowState {
  return onStack(state, ["success"]);
}

/** The final step of a completed flow. */
export function sessionView(userId: bigint, sessionToken: string): StepView {
  return { kind: "session", userId, sessionToken };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The error for a value no account could have, by field: a NUL character (no
 * Postgres text can hold one) is refused here, with the field's identifier,
 * rather than by the database.
 */
const invalidValue: Readonly<Record<string, ErrorSpec>> = {
  email: authErrors.invalidEmail,
  username: authErrors.invalidUsername,
  password: authErrors.invalidPassword,
  "new-password": authErrors.invalidPassword,
};

function checkText(field: FormFieldSpec, index: number, text: string): string {
  if (text.includes("\0")) {
    throw new HarmonyError(invalidValue[field.name] ?? authErrors.missingForm, {
      message: `field ${index + 1} (${field.name}) must not contain a NUL character`,
    });
  }
  return text;
}

/**
 * Reads the submitted values against the form's fields, by position. Text
 * fields take strings; password fields take UTF-8 bytes (or a string, which
 * carries the same text); number fields take a number or a decimal string, as
 * the Tempest client sends every non-password value as a string.
 */
function readForm(
  fields: readonly FormFieldSpec[],
  values: readonly FormValue[],
): Map<string, string> {
  if (values.length !== fields.length) {
    throw new HarmonyError(authErrors.missingForm, {
      message: `this form has ${fields.length} fields (${fields
        .map((f) => f.name)
        .join(", ")}), in that order; ${values.length} were sent`,
    });
  }
  const out = new Map<string, string>();
  fields.forEach((field, i) => {
    const value = values[i] ?? { kind: "unset" };
    const wrongType = (): never => {
      throw new HarmonyError(authErrors.missingForm, {
        message: `field ${i + 1} (${field.name}) must be ${expected(field.type)}, got ${value.kind === "unset" ? "no value" : value.kind}`,
      });
    };
    switch (field.type) {
      case "password":
      case "new-password":
      case "cadenza.passkey-assertion":
        if (value.kind === "bytes") {
          let decoded: string;
          try {
            decoded = utf8.decode(value.value);
          } catch {
            throw new HarmonyError(authErrors.missingForm, {
              message: `field ${i + 1} (${field.name}) must be UTF-8 text`,
            });
          }
          out.set(field.name, checkText(field, i, decoded));
        } else if (value.kind === "string") {
          out.set(field.name, checkText(field, i, value.value));
        } else {
          wrongType();
        }
        break;
      case "number":
        if (value.kind === "number") out.set(field.name, value.value.toString());
        else if (value.kind === "string" && /^-?\d{1,19}$/.test(value.value.trim())) {
          out.set(field.name, BigInt(value.value.trim()).toString());
        } else wrongType();
        break;
      default:
        if (value.kind === "string") out.set(field.name, checkText(field, i, value.value));
        else wrongType();
    }
  });
  return out;
}

function expected(type: FormFieldType): string {
  switch (type) {
    case "password":
    case "new-password":
      return "bytes (UTF-8)";
    case "cadenza.passkey-assertion":
      return "the WebAuthn assertion's JSON, as UTF-8 bytes";
    case "number":
      return "a number";
    default:
      return "a string";
  }
}

/**
 * Advances a flow. Throws a HarmonyError for an unknown, spent or expired
 * flow or for input the current step does not accept; the flow is then
 * unchanged, so the client can retry.
 */
export function advance(
  flow: FlowRecord,
  input: FlowInput,
  now: number,
  policy: FlowPolicy,
): Outcome {
  if (flow.done) throw new HarmonyError(authErrors.spentAuthId);
  if (now >= flow.expiresAt) throw new HarmonyError(authErrors.expiredAuthId);
  const { state } = flow;
  const step = current(state);

  switch (input.kind) {
    case "current":
      return { kind: "step", state, step: viewOf(state, policy) };
    case "back": {
      const next = canGoBack(state) ? back(state) : state;
      return { kind: "step", state: next, step: viewOf(next, policy) };
    }
    case "choice": {
      if (step === "totp" && input.choice === RECOVERY_CHOICE) {
        const next = { ...state, stack: [...state.stack, "recovery-code" as const] };
        return { kind: "step", state: next, step: viewOf(next, policy) };
      }
      const options = choiceOptions(step, policy, state);
      if (options === undefined) {
        throw new HarmonyError(authErrors.choiceSentToForm, {
          ...(step === "totp"
            ? {
                message: `the current step is a form; send its fields, or the choice "${RECOVERY_CHOICE}" for a form that takes a recovery code`,
              }
            : {}),
        });
      }
      if (!options.includes(input.choice)) {
        throw new HarmonyError(authErrors.choiceNotOffered, {
          message: `"${truncate(input.choice)}" is not offered here; the options are: ${options.join(", ") || "(none)"}`,
        });
      }
      const target = optionTarget[input.choice] ?? "initial";
      // Back to the start is a fresh start: nothing to go back to.
      const next = onStack(state, target === "initial" ? ["initial"] : [...state.stack, target]);
      return { kind: "step", state: next, step: viewOf(next, policy) };
    }
    case "form": {
      const fields = formFields(step, policy);
      if (fields === undefined) throw new HarmonyError(authErrors.formSentToChoice);
      const values = readForm(fields, input.values);
      const value = (name: string): string => values.get(name) ?? "";
      const push = (next: StepName): FlowState => onStack(state, [...state.stack, next]);
      switch (step) {
        case "login":
          return {
            kind: "submit",
            submission: { kind: "login", email: value("email"), password: value("password") },
            next: "session",
          };
        case "register":
          if (!policy.registration) {
            throw new HarmonyError(authErrors.choiceNotOffered, {
              message: "registration is closed on this server",
            });
          }
          return {
            kind: "submit",
            submission: {
              kind: "register",
              email: value("email"),
              username: value("username"),
              password: value("password"),
              invite: policy.invites ? value("token") : undefined,
            },
            next: policy.verifyEmail ? push("register-input-token") : "session",
          };
        case "register-input-token":
          return {
            kind: "submit",
            submission: { kind: "verify-email", code: value("token") },
            next: "session",
          };
        case "passkey":
          return {
            kind: "submit",
            submission: { kind: "passkey", assertion: value("assertion") },
            next: "session",
          };
        case "totp":
        case "recovery-code": {
          // Either form takes either kind of code; the step only says which is asked for.
          const pending = state.secondFactor;
          if (!pending) throw new Error(`flow state on ${step} without its pending login`);
          return {
            kind: "submit",
            submission: { kind: "second-factor", code: value("code"), pending },
            next: "session",
          };
        }
        case "reset-password-send-token":
          return {
            kind: "submit",
            submission: { kind: "send-code", purpose: "reset-password", email: value("email") },
            next: push("reset-password-input-token"),
          };
        case "reset-password-input-token":
          return {
            kind: "submit",
            submission: {
              kind: "reset-password",
              code: value("token"),
              newPassword: value("new-password"),
            },
            next: finishedState(state),
          };
        case "delete-user-send-token":
          return {
            kind: "submit",
            submission: { kind: "send-code", purpose: "delete-user", email: value("email") },
            next: push("delete-user-input-token"),
          };
        case "delete-user-input-token":
          return {
            kind: "submit",
            submission: { kind: "delete-user", code: value("token") },
            next: finishedState(state),
          };
        default:
          return {
            kind: "submit",
            submission: {
              kind: "change-password",
              email: value("email"),
              password: value("password"),
              newPassword: value("new-password"),
            },
            next: "session",
          };
      }
    }
  }
}

/** The state one step back; leaving the second-factor steps forgets the pending login. */
function back(state: FlowState): FlowState {
  const stack = state.stack.slice(0, -1);
  const top = stack[stack.length - 1];
  return state.secondFactor && top !== undefined && secondFactorSteps.has(top)
    ? { ...onStack(state, stack), secondFactor: state.secondFactor }
    : onStack(state, stack);
}

/** The step a flow stands on. */
export function currentStep(state: FlowState): StepName {
  return current(state);
}

function truncate(text: string): string {
  return text.length > 64 ? `${text.slice(0, 64)}…` : text;
}
