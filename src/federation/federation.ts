import { randomBytes } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Audit } from "../audit.js";
import { authErrors } from "../auth/auth-errors.js";
import { randomUserId, sha256 } from "../auth/random-ids.js";
import type { Sessions } from "../auth/sessions.js";
import { type Caller, unknownCaller } from "../caller.js";
import type { Clock } from "../clock.js";
import type { Config } from "../config.js";
import { type Database, uniqueViolation } from "../db/database.js";
import { HarmonyError } from "../errors.js";
import type { AccountEvents } from "../events/account-events.js";
import { type TokenData, TokenDataSchema } from "../gen/cadenza/federation/v1/token_pb.js";
import type { Limits } from "../limits/limits.js";
import { canonicalServerId } from "../server-id.js";
import { sign, verify } from "./ed25519.js";
import { federationErrors } from "./federation-errors.js";
import type { RemoteKeys } from "./remote-keys.js";
import type { ServerKeys } from "./server-keys.js";
import type { ForeignUserStore, UsedTokenStore } from "./stores.js";

/** Clocks of two homeservers may disagree by this much. */
export const CLOCK_SKEW_MS = 30_000;
/** Longest username and avatar accepted from another homeserver's token. */
const MAX_FOREIGN_USERNAME = 256;
const MAX_FOREIGN_AVATAR = 2048;

/** A signed token as the wire carries it (protocol.harmonytypes.v1.Token). */
export interface SignedToken {
  readonly sig: Uint8Array;
  readonly data: Uint8Array;
}

export interface Federation {
  /** This server's public key, for the Key RPC. */
  key(): Uint8Array;
  /** A token vouching for local user `userId` to the server `target`. */
  federate(userId: bigint, target: string, caller?: Caller): Promise<SignedToken>;
  /** `data` signed with this homeserver's current key. */
  sign(data: Uint8Array): SignedToken;
  /**
   * Verifies bytes signed by homeserver `issuer` as LoginFederated does (the
   * same policy, key fetching and errors); returns them.
   */
  verifyToken(issuer: string, token: SignedToken | undefined): Promise<Uint8Array>;
  /** Verifies a token from homeserver `issuer` and opens a session for its user here. */
  loginFederated(
    token: SignedToken | undefined,
    issuer: string,
    caller?: Caller,
  ): Promise<{ userId: bigint; sessionToken: string }>;
  /** Forgets used tokens that could no longer be accepted anyway. */
  sweep(): Promise<number>;
}

export type FederationDeps = {
  readonly db: Database;
  readonly clock: Clock;
  readonly config: Pick<Config, "serverId" | "federation">;
  readonly serverKeys: ServerKeys;
  readonly remoteKeys: RemoteKeys;
  readonly sessions: Pick<Sessions, "create">;
  readonly usedTokens: UsedTokenStore;
  readonly foreignUsers: ForeignUserStore;
  readonly events: Pick<AccountEvents, "record">;
  readonly limits: Pick<Limits, "rate">;
  readonly audit: Audit;
};

/**
 * Federation per PROTOCOL.md §6, plus the checks Harmony's reference server
 * lacks: a token must be for this server, recent, and unused; foreign users
 * are keyed by their homeserver; a failed signature refetches a rotated key.
 */
export function createFederation(deps: FederationDeps): Federation {
  const { db, clock, config, serverKeys, remoteKeys, sessions, usedTokens, foreignUsers, events } =
    deps;
  const { limits, audit } = deps;
  const policy = config.federation;

  const assertAllowed = (serverId: string): string => {
    if (!policy.enabled) throw new HarmonyError(federationErrors.federationDisabled);
    const canonical = canonicalServerId(serverId);
    if (canonical === undefined) throw new HarmonyError(federationErrors.invalidServerId);
    const refuse = (why: string): never => {
      throw new HarmonyError(federationErrors.hostNotAllowed, {
        message: `federation with ${canonical} is not allowed: ${why}`,
      });
    };
    if (policy.deny.includes(canonical)) refuse("it is in FEDERATION_DENY");
    if (policy.allow.length > 0 && !policy.allow.includes(canonical)) {
      refuse("it is not in FEDERATION_ALLOW");
    }
    if (canonical === config.serverId) refuse("it is this server");
    return canonical;
  };

  /** When a verified token stops being acceptable, or undefined when it already has. */
  const acceptableUntil = (data: TokenData, now: number): number => {
    if (data.issuedAt === 0n) {
      if (!policy.acceptUntimed) {
        throw new HarmonyError(federationErrors.tokenExpired, {
          message:
            "this server accepts only tokens that carry issued_at (FEDERATION_ACCEPT_UNTIMED=false)",
        });
      }
      // An untimed token never expires, and a Harmony server that issues them
      // signs the same bytes every time; it is refused as a replay for one
      // token lifetime (see README: Federation).
      return now + policy.tokenTtlMs;
    }
    const issuedMs = Number(data.issuedAt > 10n ** 13n ? 10n ** 13n : data.issuedAt) * 1000;
    const until = issuedMs + policy.tokenTtlMs + CLOCK_SKEW_MS;
    if (issuedMs > now + CLOCK_SKEW_MS) {
      throw new HarmonyError(federationErrors.tokenExpired, {
        message: "this token was issued in the future; check the homeserver's clock",
      });
    }
    if (now >= until) throw new HarmonyError(federationErrors.tokenExpired);
    return until;
  };

  const decode = (bytes: Uint8Array): TokenData => {
    let data: TokenData;
    try {
      data = fromBinary(TokenDataSchema, bytes);
    } catch (err) {
      throw new HarmonyError(federationErrors.badTokenData, { cause: err });
    }
    const invalid = (why: string): never => {
      throw new HarmonyError(federationErrors.badTokenData, {
        message: `the token's data is not a valid TokenData: ${why}`,
      });
    };
    if (data.userId === 0n) invalid("user_id is missing");
    if (data.username.trim() === "" || [...data.username].length > MAX_FOREIGN_USERNAME) {
      invalid(`username must be 1 to ${MAX_FOREIGN_USERNAME} characters`);
    }
    if (data.avatar !== undefined && data.avatar.length > MAX_FOREIGN_AVATAR) {
      invalid(`avatar must be at most ${MAX_FOREIGN_AVATAR} characters`);
    }
    if (data.username.includes("\0") || data.avatar?.includes("\0")) {
      invalid("username and avatar must not contain a NUL character");
    }
    return data;
  };

  /**
   * Checks a token signed by homeserver `issuerText` (policy, then the
   * signature over the exact bytes received, never a re-serialisation,
   * refetching the key once when it may have rotated); returns the canonical
   * issuer and the verified bytes.
   */
  const verifySigned = async (
    token: SignedToken | undefined,
    issuerText: string,
  ): Promise<{ issuer: string; data: Uint8Array }> => {
    if (!policy.enabled) throw new HarmonyError(federationErrors.federationDisabled);
    if (!token || (token.sig.length === 0 && token.data.length === 0)) {
      throw new HarmonyError(federationErrors.badToken);
    }
    if (token.sig.length !== 64) {
      throw new HarmonyError(federationErrors.badTokenSignature, {
        message: `the token's signature is ${token.sig.length} bytes; Ed25519 signatures are 64`,
      });
    }
    const issuer = assertAllowed(issuerText);
    const { publicKey, fresh } = await remoteKeys.get(issuerText);
    if (!verify(token.sig, token.data, publicKey)) {
      const refetched = fresh ? undefined : await remoteKeys.refresh(issuerText);
      if (!refetched || !verify(token.sig, token.data, refetched)) {
        throw new HarmonyError(federationErrors.tokenVerifyFailure);
      }
    }
    return { issuer, data: token.data };
  };

  return {
    key: () => serverKeys.current().publicKey,

    sign: (data) => ({ sig: sign(data, serverKeys.current().secretKey), data }),

    async verifyToken(issuer, token) {
      return (await verifySigned(token, issuer)).data;
    },

    async federate(userId, target, caller = unknownCaller) {
      await limits.rate("federate", caller);
      const audience = assertAllowed(target);
      const profile = await foreignUsers.profile(db, userId);
      if (!profile) throw new HarmonyError(authErrors.blankSession);
      if (!profile.local) throw new HarmonyError(federationErrors.notLocalUser);
      const data = toBinary(
        TokenDataSchema,
        create(TokenDataSchema, {
          userId,
          serverId: audience,
          username: profile.username,
          ...(profile.avatar === null ? {} : { avatar: profile.avatar }),
          issuedAt: BigInt(Math.floor(clock.now() / 1000)),
          nonce: randomBytes(16),
        }),
      );
      audit.record("federation.token.issued", { caller, userId, homeserver: audience });
      return { sig: sign(data, serverKeys.current().secretKey), data };
    },

    async loginFederated(token, issuerText, caller = unknownCaller) {
      await limits.rate("loginFederated", caller);
      try {
        const session = await loginFederated(token, issuerText, caller);
        audit.record("federation.login.succeeded", {
          caller,
          userId: session.userId,
          homeserver: canonicalServerId(issuerText) ?? "",
        });
        return session;
      } catch (err) {
        const reason =
          err instanceof HarmonyError ? err.identifier.replace(/^(h|hrpc)\./, "") : "error";
        audit.record("federation.login.refused", {
          caller,
          reason,
          homeserver: canonicalServerId(issuerText) ?? "invalid",
        });
        throw err;
      }
    },

    sweep: () => usedTokens.deleteExpired(db, clock.now()),
  };

  async function loginFederated(
    token: SignedToken | undefined,
    issuerText: string,
    caller: Caller,
  ): Promise<{ userId: bigint; sessionToken: string }> {
    {
      const signed = await verifySigned(token, issuerText);
      const { issuer } = signed;
      const data = decode(signed.data);
      if (canonicalServerId(data.serverId) !== config.serverId) {
        throw new HarmonyError(federationErrors.badTokenAudience, {
          message: `this token was issued for ${data.serverId || "no server"}, not for ${config.serverId}`,
        });
      }
      const now = clock.now();
      const until = acceptableUntil(data, now);
      // Keyed by issuer and data, not signature: a token cannot be replayed
      // under a second encoding of its signature.
      const tokenHash = sha256(`${issuer}\n${Buffer.from(signed.data).toString("base64")}`);

      for (let attempt = 0; ; attempt++) {
        try {
          return await db.transaction(async (tx) => {
            if (!(await usedTokens.remember(tx, tokenHash, until))) {
              throw new HarmonyError(federationErrors.tokenReplayed);
            }
            const user = await foreignUsers.upsert(tx, {
              id: randomUserId(),
              homeserver: issuer,
              foreignUserId: data.userId,
              username: data.username,
              avatar: data.avatar,
              createdAt: now,
            });
            if (user.disabled) throw new HarmonyError(authErrors.userDisabled);
            const sessionToken = await sessions.create(tx, user.id, caller);
            // Last: recording an event takes the lock that orders events.
            if (user.created) {
              await events.record(tx, user.id, {
                kind: "federated_user_created",
                homeserver: issuer,
                foreignUserId: data.userId,
                username: data.username,
              });
            } else if (user.previousUsername !== data.username) {
              await events.record(tx, user.id, {
                kind: "username_changed",
                oldUsername: user.previousUsername,
                username: data.username,
              });
            }
            return { userId: user.id, sessionToken };
          });
        } catch (err) {
          // A new account's random ID collided with an existing one: draw again.
          if (uniqueViolation(err) !== "users_pkey" || attempt >= 4) throw err;
        }
      }
    }
  }
}
