import type { Client } from "@connectrpc/connect";
import type {
  AuthService,
  NextStepRequest_FormFields,
} from "../../src/gen/protocol/auth/v1/auth_pb.js";

type AuthClient = Client<typeof AuthService>;
type FieldInit = Pick<NextStepRequest_FormFields, "field">;

export const text = (value: string): FieldInit => ({ field: { case: "string", value } });
export const bytes = (value: string): FieldInit => ({
  field: { case: "bytes", value: new TextEncoder().encode(value) },
});

/** Submits a form to the current step. */
export function submitForm(client: AuthClient, authId: string, fields: FieldInit[]) {
  return client.nextStep({ authId, step: { case: "form", value: { fields } } });
}

/** Picks a choice on the current step. */
export function choose(client: AuthClient, authId: string, choice: string) {
  return client.nextStep({ authId, step: { case: "choice", value: { choice } } });
}

/** Begins a flow and walks it to the given form. */
export async function openForm(client: AuthClient, form: "login" | "register"): Promise<string> {
  const { authId } = await client.beginAuth({});
  await client.nextStep({ authId });
  await choose(client, authId, form);
  return authId;
}

export interface TestUser {
  readonly email: string;
  readonly username: string;
  readonly password: string;
}

let counter = 0;
/** A distinct valid account for each call. */
export function newUser(): TestUser {
  counter++;
  const tag = `${process.pid}x${counter}x${Math.random().toString(36).slice(2, 8)}`;
  return {
    email: `user${tag}@example.org`,
    username: `user${tag}`,
    password: `correct horse battery ${tag}`,
  };
}

/** Registers through the flow; returns the session step's values. */
export async function register(client: AuthClient, user: TestUser) {
  const authId = await openForm(client, "register");
  const res = await submitForm(client, authId, [
    text(user.email),
    text(user.username),
    bytes(user.password),
  ]);
  if (res.step?.step.case !== "session") throw new Error("expected a session step");
  return res.step.step.value;
}

/** Logs in through the flow; returns the session step's values. */
export async function login(client: AuthClient, email: string, password: string) {
  const authId = await openForm(client, "login");
  const res = await submitForm(client, authId, [text(email), bytes(password)]);
  if (res.step?.step.case !== "session") throw new Error("expected a session step");
  return res.step.step.value;
}
