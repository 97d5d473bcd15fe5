import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";
import { isoBase64URL, isoCBOR } from "@simplewebauthn/server/helpers";

/**
 * A WebAuthn authenticator in software, for tests without a browser: it
 * makes an ES256 (P-256) credential with "none" attestation and signs
 * assertions exactly as an authenticator and a browser together would
 * (authenticator data, client data JSON, a DER ECDSA signature over both).
 * Every knob a test needs to make an answer wrong: the origin, the
 * challenge, the user-verified flag, the signature counter.
 */

const b64 = (bytes: Uint8Array | Buffer): string => isoBase64URL.fromBuffer(Uint8Array.from(bytes));
const sha256 = (data: Uint8Array | string) => createHash("sha256").update(data).digest();

const UP = 0x01;
const UV = 0x04;
const AT = 0x40;

interface Credential {
  readonly id: Buffer;
  readonly privateKey: KeyObject;
  readonly cose: Uint8Array;
  readonly userHandle: string;
  counter: number;
}

export interface CeremonyOptions {
  /** The origin the browser reports (clientDataJSON). */
  readonly origin: string;
  /** Sign over another challenge than the options carry. */
  readonly challenge?: string;
  /** Whether the user was verified (PIN, biometric); default true. */
  readonly userVerified?: boolean;
  /** The signature counter to report (default: one more than the last). */
  readonly counter?: number;
  /** Answer with this credential ID instead (an unknown credential). */
  readonly credentialId?: string;
}

function clientData(type: string, challenge: string, origin: string): string {
  return b64(Buffer.from(JSON.stringify({ type, challenge, origin, crossOrigin: false })));
}

export function createSoftAuthenticator() {
  const credentials: Credential[] = [];
  const counter = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };

  return {
    /** The credentials made so far, newest last. */
    get ids(): string[] {
      return credentials.map((c) => b64(c.id));
    },

    /** Answers creation options (`BeginPasskeyRegistration`) with a new credential's JSON. */
    register(optionsJson: string, o: CeremonyOptions): string {
      const options = JSON.parse(optionsJson) as {
        challenge: string;
        rp: { id: string };
        user: { id: string };
      };
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const jwk = publicKey.export({ format: "jwk" });
      const cose = isoCBOR.encode(
        new Map<number, number | Uint8Array>([
          [1, 2], // kty: EC2
          [3, -7], // alg: ES256
          [-1, 1], // crv: P-256
          [-2, isoBase64URL.toBuffer(jwk.x ?? "")],
          [-3, isoBase64URL.toBuffer(jwk.y ?? "")],
        ]),
      );
      const id = randomBytes(32);
      const idLength = Buffer.alloc(2);
      idLength.writeUInt16BE(id.length);
      const authData = Buffer.concat([
        sha256(options.rp.id),
        Buffer.from([UP | AT | (o.userVerified === false ? 0 : UV)]),
        counter(0),
        Buffer.alloc(16), // AAGUID: none
        idLength,
        id,
        cose,
      ]);
      const attestationObject = isoCBOR.encode(
        new Map<string, string | Uint8Array | Map<string, string>>([
          ["fmt", "none"],
          ["attStmt", new Map<string, string>()],
          ["authData", Uint8Array.from(authData)],
        ]),
      );
      credentials.push({ id, privateKey, cose, userHandle: options.user.id, counter: 0 });
      return JSON.stringify({
        id: b64(id),
        rawId: b64(id),
        type: "public-key",
        response: {
          clientDataJSON: clientData("webauthn.create", o.challenge ?? options.challenge, o.origin),
          attestationObject: b64(attestationObject),
          transports: ["internal"],
        },
        clientExtensionResults: {},
        authenticatorAttachment: "platform",
      });
    },

    /** Answers request options (`GetSignInOptions`) with an assertion's JSON, by the newest credential. */
    assert(optionsJson: string, o: CeremonyOptions): string {
      const options = JSON.parse(optionsJson) as { challenge: string; rpId: string };
      const credential = credentials.at(-1);
      if (!credential) throw new Error("the soft authenticator has no credential yet");
      credential.counter = o.counter ?? credential.counter + 1;
      const authData = Buffer.concat([
        sha256(options.rpId),
        Buffer.from([UP | (o.userVerified === false ? 0 : UV)]),
        counter(credential.counter),
      ]);
      const clientDataJSON = clientData("webauthn.get", o.challenge ?? options.challenge, o.origin);
      const signature = sign(
        "sha256",
        Buffer.concat([authData, sha256(isoBase64URL.toBuffer(clientDataJSON))]),
        credential.privateKey,
      );
      const id = o.credentialId ?? b64(credential.id);
      return JSON.stringify({
        id,
        rawId: id,
        type: "public-key",
        response: {
          clientDataJSON,
          authenticatorData: b64(authData),
          signature: b64(signature),
          userHandle: credential.userHandle,
        },
        clientExtensionResults: {},
        authenticatorAttachment: "platform",
      });
    },
  };
}
