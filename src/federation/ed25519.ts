import { createHash } from "node:crypto";
import * as ed from "@noble/ed25519";

// @noble/ed25519 needs a synchronous SHA-512 for its sync API; node:crypto's
// is native. This configures the library, once, for the whole process.
ed.hashes.sha512 = (message) => createHash("sha512").update(message).digest();

export interface KeyPair {
  /** The 32-byte seed. */
  readonly secretKey: Uint8Array;
  /** The 32-byte public key, as the Key RPC returns it. */
  readonly publicKey: Uint8Array;
}

/** A new key pair from the CSPRNG. */
export function generateKeyPair(): KeyPair {
  return ed.keygen();
}

/** The public key of a 32-byte seed. */
export function publicKeyOf(secretKey: Uint8Array): Uint8Array {
  return ed.getPublicKey(secretKey);
}

/** A 64-byte Ed25519 signature (RFC 8032) over exactly `message`. */
export function sign(message: Uint8Array, secretKey: Uint8Array): Uint8Array {
  return ed.sign(message, secretKey);
}

/**
 * Verifies per RFC 8032's strict rules rather than ZIP-215's permissive ones,
 * so no second encoding of a signature verifies. Never throws.
 */
export function verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  try {
    return ed.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}
