import { createHash, createPublicKey, type KeyObject, verify as verifyNative } from "node:crypto";
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

// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 raw bytes.
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const publicKeyObjects = new Map<string, KeyObject>();

/**
 * Verifies an Ed25519 signature over exactly `message` with OpenSSL through
 * node:crypto, which is about fifteen times faster than @noble/ed25519's
 * pure-JavaScript verify (BENCHMARKS.md, row 6) and checks the same RFC 8032
 * equation. Replays are caught by the data, not the signature encoding, so the
 * two libraries' edge cases on non-canonical encodings do not matter. Never throws.
 */
export function verify(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  if (signature.length !== 64 || publicKey.length !== 32) return false;
  try {
    const id = Buffer.from(publicKey).toString("hex");
    let key = publicKeyObjects.get(id);
    if (!key) {
      key = createPublicKey({
        key: Buffer.concat([SPKI_PREFIX, publicKey]),
        format: "der",
        type: "spki",
      });
      if (publicKeyObjects.size >= 1024) publicKeyObjects.clear();
      publicKeyObjects.set(id, key);
    }
    return verifyNative(null, message, key, signature);
  } catch {
    return false;
  }
}
