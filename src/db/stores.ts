import type { AccountAdminStore } from "../auth/account-admin.js";
import type { EmailCodeStore } from "../auth/email-codes.js";
import type { InviteStore } from "../auth/invites.js";
import type { PasskeyStore } from "../auth/passkeys.js";
import type { SecondFactorStore } from "../auth/second-factor.js";
import type { FlowStore, SessionStore, UserStore } from "../auth/stores.js";
import type { AccountEventStore } from "../events/account-events.js";
import type {
  ForeignUserStore,
  RemoteKeyStore,
  ServerKeyStore,
  UsedTokenStore,
} from "../federation/stores.js";
import type { DirectoryStore } from "../homeserver/user-directory.js";
import type { LoginThrottleStore } from "../limits/login-throttle.js";
import { createAccountAdminStore } from "./account-admin-store.js";
import { createAccountEventStore } from "./account-event-store.js";
import { createDirectoryStore } from "./directory-store.js";
import { createEmailCodeStore } from "./email-code-store.js";
import {
  createForeignUserStore,
  createRemoteKeyStore,
  createServerKeyStore,
  createUsedTokenStore,
} from "./federation-stores.js";
import { createFlowStore } from "./flow-store.js";
import { createInviteStore } from "./invite-store.js";
import { createLoginThrottleStore } from "./limit-store.js";
import { createPasskeyStore } from "./passkey-store.js";
import { createSecondFactorStore } from "./second-factor-store.js";
import { createSessionStore } from "./session-store.js";
import { createUserStore } from "./user-store.js";

/** Every store, each implementing a feature's store interface. */
export interface Stores {
  readonly flows: FlowStore;
  readonly sessions: SessionStore;
  readonly users: UserStore;
  readonly serverKeys: ServerKeyStore;
  readonly remoteKeys: RemoteKeyStore;
  readonly usedTokens: UsedTokenStore;
  readonly foreignUsers: ForeignUserStore;
  readonly accountEvents: AccountEventStore;
  readonly directory: DirectoryStore;
  readonly loginThrottle: LoginThrottleStore;
  readonly accountAdmin: AccountAdminStore;
  readonly invites: InviteStore;
  readonly emailCodes: EmailCodeStore;
  readonly secondFactor: SecondFactorStore;
  readonly passkeys: PasskeyStore;
}

/**
 * The stores are stateless: every method takes the Queryable (or, to LISTEN,
 * the Database) it runs on, so one transaction can span several of them.
 */
export function createStores(): Stores {
  return {
    flows: createFlowStore(),
    sessions: createSessionStore(),
    users: createUserStore(),
    serverKeys: createServerKeyStore(),
    remoteKeys: createRemoteKeyStore(),
    usedTokens: createUsedTokenStore(),
    foreignUsers: createForeignUserStore(),
    accountEvents: createAccountEventStore(),
    directory: createDirectoryStore(),
    loginThrottle: createLoginThrottleStore(),
    accountAdmin: createAccountAdminStore(),
    invites: createInviteStore(),
    emailCodes: createEmailCodeStore(),
    secondFactor: createSecondFactorStore(),
    passkeys: createPasskeyStore(),
  };
}
