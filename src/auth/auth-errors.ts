import { Code } from "@connectrpc/connect";
import type { ErrorSpec } from "../errors.js";

/**
 * The auth flow's, accounts' and sessions' errors. Identifiers are Harmony's
 * own (PROTOCOL.md §5) so existing clients recognise them; the few cadenza adds
 * are marked and listed in the README.
 */
export const authErrors = {
  missingAuthId: {
    identifier: "h.bad-auth-id",
    code: Code.InvalidArgument,
    message: "auth_id is missing or malformed; call BeginAuth to get one",
  },
  unknownAuthId: {
    identifier: "h.bad-auth-id",
    code: Code.NotFound,
    message: "no auth flow has this auth_id; call BeginAuth to start one",
  },
  expiredAuthId: {
    identifier: "h.bad-auth-id",
    code: Code.FailedPrecondition,
    message: "this auth flow has expired; call BeginAuth to start again",
  },
  spentAuthId: {
    identifier: "h.bad-auth-id",
    code: Code.FailedPrecondition,
    message: "this auth flow is already complete; call BeginAuth to start a new one",
  },
  choiceNotOffered: {
    identifier: "h.bad-auth-choice",
    code: Code.InvalidArgument,
    message: "that choice is not one of the options of the current step",
  },
  choiceSentToForm: {
    identifier: "h.bad-auth-choice",
    code: Code.InvalidArgument,
    message: "the current step is a form; send its fields, not a choice",
  },
  formSentToChoice: {
    identifier: "h.bad-auth-choice",
    code: Code.InvalidArgument,
    message: "the current step is a choice; send one of its options, not a form",
  },
  missingForm: {
    identifier: "h.missing-form",
    code: Code.InvalidArgument,
    message: "the form's fields are missing, extra or of the wrong type",
  },
  /** cadenza's own: two submissions raced on one flow and the other won. */
  flowConflict: {
    identifier: "h.auth-flow-conflict",
    code: Code.Aborted,
    message: "the auth flow changed while this step was processed; ask for the current step",
  },
  /** cadenza's own: a flow that keeps asking for steps is cut off. */
  tooManySteps: {
    identifier: "hrpc.resource-exhausted",
    code: Code.ResourceExhausted,
    message: "this auth flow has taken too many steps; call BeginAuth to start again",
    hrpcStatus: 429,
  },
  badCredentials: {
    identifier: "h.bad-password\nh.bad-email",
    code: Code.Unauthenticated,
    message: "wrong email or password",
  },
  /**
   * cadenza's own: a wrong second-factor code (TOTP or recovery code) at the
   * `totp` or `recovery-code` step, or in the account service. The same kind
   * of answer as a wrong password; it counts towards the login schedule.
   */
  badSecondFactor: {
    identifier: "h.bad-second-factor",
    code: Code.Unauthenticated,
    message:
      "wrong code: enter the 6-digit code your authenticator app shows now, or one of your recovery codes",
  },
  /** cadenza's own: a TOTP code that was already accepted once (one code, one use). */
  secondFactorReplayed: {
    identifier: "h.bad-second-factor",
    code: Code.Unauthenticated,
    message:
      "this code was already used: wait for your authenticator app to show the next one, then enter that",
  },
  /** cadenza's own: the password was reset or changed after this flow checked it. */
  passwordChanged: {
    identifier: "h.password-changed",
    code: Code.FailedPrecondition,
    message:
      "the account's password was changed after you entered it here: go back and log in with the current one",
  },
  alreadyRegistered: {
    identifier: "h.already-registered",
    code: Code.AlreadyExists,
    message: "an account with this email or username already exists",
  },
  invalidEmail: {
    identifier: "h.invalid-email",
    code: Code.InvalidArgument,
    message: "the email address is not valid",
  },
  invalidUsername: {
    identifier: "h.invalid-username",
    code: Code.InvalidArgument,
    message: "the username is not valid",
  },
  invalidPassword: {
    identifier: "h.invalid-password",
    code: Code.InvalidArgument,
    message: "the password is not acceptable",
  },
  /** cadenza's own: an operator disabled the account (said only to who knows the password). */
  userDisabled: {
    identifier: "h.user-disabled",
    code: Code.PermissionDenied,
    message: "this account has been disabled by the homeserver's operators",
  },
  blankSession: {
    identifier: "h.blank-session",
    code: Code.Unauthenticated,
    message:
      "no valid session: log in again and send the session token in the Authorization header",
  },
} as const satisfies Record<string, ErrorSpec>;
