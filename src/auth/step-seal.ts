import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import type { StepView } from "./flow-machine.js";
import { sha256 } from "./random-ids.js";

/**
 * The two keys derived from an auth_id. The database sees only `lookup`, so
 * neither the auth_id nor the steps sealed with `seal` (the last of which
 * carries a session token) can be recovered from it.
 */
export interface FlowKeys {
  /** SHA-256 of the auth_id: the flow's primary key. */
  readonly lookup: Buffer;
  /** AES-256-GCM key for the flow's step log (HKDF-SHA-256 of the auth_id). */
  readonly seal: Buffer;
}

export function flowKeys(authId: string): FlowKeys {
  return {
    lookup: sha256(authId),
    seal: Buffer.from(hkdfSync("sha256", authId, "", "cadenza/auth-flow-steps/v1", 32)),
  };
}

type SealedJson =
  | Exclude<StepView, { kind: "session" }>
  | { kind: "session"; userId: string; sessionToken: string };

/** Encrypts a step: 12-byte nonce, ciphertext, 16-byte tag. */
export function sealStep(key: Buffer, step: StepView): Buffer {
  const json: SealedJson =
    step.kind === "session"
      ? { kind: "session", userId: step.userId.toString(), sessionToken: step.sessionToken }
      : step;
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  const body = Buffer.concat([cipher.update(JSON.stringify(json), "utf8"), cipher.final()]);
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

/** Decrypts a step sealed by {@link sealStep}; throws when it was tampered with. */
export function openStep(key: Buffer, sealed: Uint8Array): StepView {
  const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const decipher = createDecipheriv("aes-256-gcm", key, bytes.subarray(0, 12));
  decipher.setAuthTag(bytes.subarray(bytes.length - 16));
  const text = Buffer.concat([
    decipher.update(bytes.subarray(12, bytes.length - 16)),
    decipher.final(),
  ]).toString("utf8");
  const json = JSON.parse(text) as SealedJson;
  return json.kind === "session"
    ? { kind: "session", userId: BigInt(json.userId), sessionToken: json.sessionToken }
    : json;
}
