import type { MessageInitShape } from "@bufbuild/protobuf";
import type { NextStepRequestSchema } from "../../src/gen/protocol/auth/v1/auth_pb.js";

/** A form value as NextStep takes it (`NextStepRequest.FormFields`). */
export type FormValue =
  | { readonly case: "bytes"; readonly value: Uint8Array }
  | { readonly case: "string"; readonly value: string }
  | { readonly case: "number"; readonly value: bigint };

/**
 * How the page shows and sends one type of form field. The table below holds
 * the types Harmony servers send; a type of a server's own that is not in it
 * is shown as a text input and sent as a string (see {@link fieldKindOf}), so
 * a new kind of step degrades instead of breaking the page. A client feature
 * that knows a type better (a passkey, say) adds an entry.
 */
export interface FieldKind {
  /** The `<input type>`. */
  readonly inputType: "email" | "password" | "text" | "number";
  /**
   * Set for a field whose value no one types: the page gets it from the
   * browser when the form is submitted (a passkey's assertion), and shows
   * no input for it.
   */
  readonly ceremony?: "passkey";
  /** The `autocomplete` token, for password managers and autofill. */
  readonly autocomplete: string;
  readonly inputMode?: "numeric" | "email" | "text";
  /** The value typed, as the server takes it for this type. */
  encode(value: string): FormValue;
}

const utf8 = new TextEncoder();

const asString = (value: string): FormValue => ({ case: "string", value });
/** Passwords travel as bytes: their UTF-8, exactly as typed. */
const asBytes = (value: string): FormValue => ({ case: "bytes", value: utf8.encode(value) });
/**
 * A whole number as int64; anything else is sent as typed, as a string, so the
 * server (which accepts a decimal string too) says what is wrong with it.
 */
const asNumber = (value: string): FormValue => {
  const trimmed = value.trim();
  return /^-?\d{1,19}$/.test(trimmed)
    ? { case: "number", value: BigInt(trimmed) }
    : asString(value);
};

export const fieldKinds: Readonly<Record<string, FieldKind>> = {
  email: { inputType: "email", autocomplete: "email", inputMode: "email", encode: asString },
  text: { inputType: "text", autocomplete: "on", encode: asString },
  password: { inputType: "password", autocomplete: "current-password", encode: asBytes },
  "new-password": { inputType: "password", autocomplete: "new-password", encode: asBytes },
  number: { inputType: "number", autocomplete: "off", inputMode: "numeric", encode: asNumber },
  /** cadenza's own: the browser's WebAuthn assertion, as its JSON in UTF-8 bytes. */
  "cadenza.passkey-assertion": {
    inputType: "text",
    autocomplete: "off",
    ceremony: "passkey",
    encode: asBytes,
  },
};

/** Names whose meaning tells autofill more than their type does. */
const autocompleteByName: Readonly<Record<string, string>> = {
  username: "username",
  token: "one-time-code",
};

/** A field as the page renders it. */
export interface FieldView {
  readonly name: string;
  /** The type the server sent. */
  readonly type: string;
  /** Whether the page knows the type (else it is shown as text). */
  readonly known: boolean;
  readonly kind: FieldKind;
  readonly autocomplete: string;
}

/** The kind for a server's field type, falling back to text for a type the page does not know. */
export function fieldKindOf(type: string): { kind: FieldKind; known: boolean } {
  const kind = Object.hasOwn(fieldKinds, type) ? fieldKinds[type] : undefined;
  return kind ? { kind, known: true } : { kind: fieldKinds.text as FieldKind, known: false };
}

export function fieldView(field: { readonly name: string; readonly type: string }): FieldView {
  const { kind, known } = fieldKindOf(field.type);
  const byName = Object.hasOwn(autocompleteByName, field.name)
    ? autocompleteByName[field.name]
    : undefined;
  // A new password is never autofilled with a stored one, whatever its name.
  const autocomplete =
    field.type === "new-password" ? kind.autocomplete : (byName ?? kind.autocomplete);
  return { name: field.name, type: field.type, known, kind, autocomplete };
}

/**
 * The NextStep request that answers a form: one value per field, in the
 * order of the server's fields (Harmony forms are positional), each encoded
 * as its field's type asks.
 */
export function formRequest(
  authId: string,
  fields: readonly FieldView[],
  values: readonly string[],
): MessageInitShape<typeof NextStepRequestSchema> {
  if (values.length !== fields.length) {
    throw new Error(`the form has ${fields.length} fields but ${values.length} values were given`);
  }
  return {
    authId,
    step: {
      case: "form",
      value: { fields: fields.map((f, i) => ({ field: f.kind.encode(values[i] ?? "") })) },
    },
  };
}

/** The NextStep request that picks a choice's option. */
export function choiceRequest(
  authId: string,
  option: string,
): MessageInitShape<typeof NextStepRequestSchema> {
  return { authId, step: { case: "choice", value: { choice: option } } };
}
