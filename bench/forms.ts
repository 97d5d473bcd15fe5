import type { NextStepRequest_FormFields } from "../src/gen/protocol/auth/v1/auth_pb.js";

type Field = Pick<NextStepRequest_FormFields, "field">;
const utf8 = new TextEncoder();

/** The `step` of a NextStep that submits the login form. */
export function loginForm(email: string, password: string) {
  return {
    case: "form" as const,
    value: {
      fields: [
        { field: { case: "string", value: email } },
        { field: { case: "bytes", value: utf8.encode(password) } },
      ] satisfies Field[],
    },
  };
}

/** The `step` of a NextStep that submits the registration form. */
export function registerForm(email: string, username: string, password: string) {
  return {
    case: "form" as const,
    value: {
      fields: [
        { field: { case: "string", value: email } },
        { field: { case: "string", value: username } },
        { field: { case: "bytes", value: utf8.encode(password) } },
      ] satisfies Field[],
    },
  };
}

/** The `step` of a NextStep that picks a choice. */
export function choice(option: string) {
  return { case: "choice" as const, value: { choice: option } };
}
