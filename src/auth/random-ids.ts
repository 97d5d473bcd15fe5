import { createHash, randomBytes } from "node:crypto";

/**
 * A secret of `bytes` CSPRNG bytes as base64url: only letters, digits, `-` and
 * `_`, which are HTTP token characters, so it travels unescaped in headers and
 * in `Sec-WebSocket-Protocol`.
 */
export function randomToken(bytes: number): string {
  return randomBytes(bytes).toString("base64url");
}

/** SHA-256, the form in which secrets (session tokens, auth_ids) are stored. */
export function sha256(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/**
 * A random user ID in 1…2^63-1: it fits a signed 64-bit column and says
 * nothing about how many users there are.
 */
export function randomUserId(): bigint {
  for (;;) {
    const id = randomBytes(8).readBigUInt64BE() & 0x7fff_ffff_ffff_ffffn;
    if (id !== 0n) return id;
  }
}
