import { type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  browserSupportsWebAuthn,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  startAuthentication,
  startRegistration,
  WebAuthnError,
} from "@simplewebauthn/browser";
import type { AccountService } from "../../src/gen/cadenza/account/v1/account_pb.js";
import type { PasskeyService } from "../../src/gen/cadenza/passkey/v1/passkey_pb.js";

/**
 * Passkeys in the page, through @simplewebauthn/browser: the WebAuthn
 * ceremonies, with options from cadenza and answers sent back as JSON. The
 * page announces the feature (so the server offers the passkey step) only
 * where the browser has WebAuthn at all; cadenza itself offers it only to the
 * origins its passkeys are valid on.
 */

/** The BeginAuth request header that announces the page's extra features. */
export const CLIENT_FEATURES_HEADER = "cadenza-client-features";

/** Whether this browser can use passkeys (`window.PublicKeyCredential` exists). */
export const passkeysSupported = (): boolean => browserSupportsWebAuthn();

/**
 * A ceremony that did not finish, as a call error the page shows like any
 * other: the user cancelled it or let it time out, or the device has no
 * passkey for this site or already holds one for this account.
 */
export function ceremonyError(err: unknown): ConnectError {
  const code = err instanceof WebAuthnError ? err.code : undefined;
  const name = err instanceof Error ? err.name : "";
  const message =
    code === "ERROR_AUTHENTICATOR_PREVIOUSLY_REGISTERED"
      ? "This device already holds a passkey for your account."
      : name === "NotAllowedError" || code === "ERROR_CEREMONY_ABORTED"
        ? "No passkey was used: the request was cancelled or timed out. Try again."
        : code === "ERROR_INVALID_DOMAIN" || code === "ERROR_INVALID_RP_ID"
          ? "Passkeys of this server cannot be used on this page's address."
          : `The passkey could not be used (${err instanceof Error ? err.message : String(err)}).`;
  return new ConnectError(message, Code.Canceled, undefined, undefined, err);
}

/** Runs a ceremony, turning its failure into a {@link ceremonyError}. */
async function ceremony<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw ceremonyError(err);
  }
}

/**
 * The value of a `cadenza.passkey-assertion` field: fresh options for the
 * flow's passkey step, the browser's assertion with a passkey the user
 * picks, as JSON.
 */
export async function signInAssertion(
  passkey: Client<typeof PasskeyService>,
  authId: string,
): Promise<string> {
  const { optionsJson } = await passkey.getSignInOptions({ authId });
  const optionsJSON = JSON.parse(optionsJson) as PublicKeyCredentialRequestOptionsJSON;
  return JSON.stringify(await ceremony(() => startAuthentication({ optionsJSON })));
}

/**
 * Adds a passkey to the signed-in account: the password (and a TOTP code when
 * TOTP is on), the browser's new credential, its name.
 */
export async function registerPasskey(
  account: Client<typeof AccountService>,
  callOptions: { headers: Record<string, string> },
  password: string,
  code: string,
  name: string,
) {
  const { optionsJson } = await account.beginPasskeyRegistration({ password, code }, callOptions);
  const optionsJSON = JSON.parse(optionsJson) as PublicKeyCredentialCreationOptionsJSON;
  const response = await ceremony(() => startRegistration({ optionsJSON }));
  const { passkey } = await account.finishPasskeyRegistration(
    { responseJson: JSON.stringify(response), name },
    callOptions,
  );
  return passkey;
}
