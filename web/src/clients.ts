import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { AccountService } from "../../src/gen/cadenza/account/v1/account_pb.js";
import { PasskeyService } from "../../src/gen/cadenza/passkey/v1/passkey_pb.js";
import { AuthService } from "../../src/gen/protocol/auth/v1/auth_pb.js";
import type { ClientConfig } from "./client-config.js";

/** The page's services, on one transport to the configured server. */
export interface Clients {
  readonly auth: Client<typeof AuthService>;
  readonly account: Client<typeof AccountService>;
  /** The options of a flow's passkey step (cadenza's own). */
  readonly passkey: Client<typeof PasskeyService>;
}

/** gRPC-Web (binary) by default, or Connect (JSON): both work over the browser's fetch on HTTP/1.1. */
export function createTransport(config: ClientConfig): Transport {
  return config.protocol === "connect"
    ? createConnectTransport({ baseUrl: config.server })
    : createGrpcWebTransport({ baseUrl: config.server });
}

export function createClients(config: ClientConfig): Clients {
  const transport = createTransport(config);
  return {
    auth: createClient(AuthService, transport),
    account: createClient(AccountService, transport),
    passkey: createClient(PasskeyService, transport),
  };
}

/** Call options carrying a session: Harmony sends the raw token as Authorization. */
export const withSession = (token: string) => ({ headers: { authorization: token } });
