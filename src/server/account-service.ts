import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { type AccountAdmin, adminErrors } from "../auth/account-admin.js";
import { authErrors } from "../auth/auth-errors.js";
import type { PasskeyInfo, Passkeys } from "../auth/passkeys.js";
import type { SecondFactor } from "../auth/second-factor.js";
import type { AuthenticatedSession } from "../auth/sessions.js";
import { callerKey } from "../caller.js";
import { HarmonyError } from "../errors.js";
import type { AccountService } from "../gen/cadenza/account/v1/account_pb.js";
import { sessionKey } from "./rpc/interceptors.js";

export type AccountServiceDeps = {
  readonly accountAdmin: Pick<AccountAdmin, "sessions" | "revokeSessions">;
  readonly secondFactor: SecondFactor;
  readonly passkeys: Passkeys;
};

/** A passkey as the wire carries it (the account and admin services alike). */
export const passkeyMessage = (p: PasskeyInfo) => ({
  passkeyId: p.passkeyId,
  name: p.name,
  createdAt: timestampFromMs(p.createdAt),
  ...(p.lastUsedAt === undefined ? {} : { lastUsedAt: timestampFromMs(p.lastUsedAt) }),
  backedUp: p.backedUp,
});

/** The caller's session, which the auth interceptor checked (every method requires one). */
function caller(ctx: HandlerContext): AuthenticatedSession {
  const session = ctx.values.get(sessionKey);
  if (!session) throw new HarmonyError(authErrors.blankSession);
  return session;
}

/**
 * cadenza.account.v1.AccountService on the public port: a user's own
 * sessions, second factor and passkeys. Revocation emits `sessions_revoked`
 * and reaches every replica's session cache at once; turning TOTP on or off
 * emits `second_factor_changed`, adding or removing a passkey
 * `passkeys_changed`.
 */
export function createAccountServiceImpl({
  accountAdmin,
  secondFactor,
  passkeys,
}: AccountServiceDeps) {
  return {
    async listSessions(_req, ctx) {
      const me = caller(ctx);
      const sessions = await accountAdmin.sessions(me.userId);
      return {
        sessions: sessions.map((s) => ({
          sessionId: s.sessionId,
          createdAt: timestampFromMs(s.createdAt),
          lastUsedAt: timestampFromMs(s.lastUsedAt),
          expiresAt: timestampFromMs(s.expiresAt),
          clientAddress: s.clientAddress,
          userAgent: s.userAgent,
          current: s.sessionId === me.sessionId,
        })),
      };
    },

    async revokeSession(req, ctx) {
      const me = caller(ctx);
      const ended = await accountAdmin.revokeSessions(me.userId, [req.id]);
      if (ended.length === 0) {
        throw new HarmonyError(adminErrors.badSessionId, {
          message: "you have no session with that ID; ListSessions names them",
        });
      }
      return {};
    },

    async revokeOtherSessions(_req, ctx) {
      const me = caller(ctx);
      const ended = await accountAdmin.revokeSessions(me.userId, undefined, me.sessionId);
      return { revoked: ended.length };
    },

    async logout(_req, ctx) {
      const me = caller(ctx);
      await accountAdmin.revokeSessions(me.userId, [me.sessionId]);
      return {};
    },

    async getSecondFactor(_req, ctx) {
      const status = await secondFactor.status(caller(ctx).userId);
      return {
        totpEnabled: status.enabled,
        ...(status.enabledAt === undefined
          ? {}
          : { totpEnabledAt: timestampFromMs(status.enabledAt) }),
        recoveryCodesLeft: status.recoveryCodesLeft,
        totpEnrollmentPending: status.pending,
      };
    },

    async beginTotpEnrollment(req, ctx) {
      const e = await secondFactor.begin(caller(ctx), req.password, ctx.values.get(callerKey));
      return { secret: e.secret, otpauthUri: e.uri, qrCodeSvg: e.qrCodeSvg };
    },

    async confirmTotpEnrollment(req, ctx) {
      const me = caller(ctx);
      return {
        recoveryCodes: await secondFactor.confirm(me.userId, req.code, ctx.values.get(callerKey)),
      };
    },

    async regenerateRecoveryCodes(req, ctx) {
      const me = caller(ctx);
      return {
        recoveryCodes: await secondFactor.regenerateRecoveryCodes(
          me.userId,
          req.code,
          ctx.values.get(callerKey),
        ),
      };
    },

    async disableTotp(req, ctx) {
      const me = caller(ctx);
      await secondFactor.disable(me.userId, req.code, req.password, ctx.values.get(callerKey));
      return {};
    },

    async beginPasskeyRegistration(req, ctx) {
      const me = caller(ctx);
      return {
        optionsJson: await passkeys.beginRegistration(
          me.userId,
          me.sessionId,
          req.password,
          req.code,
          ctx.values.get(callerKey),
        ),
      };
    },

    async finishPasskeyRegistration(req, ctx) {
      const me = caller(ctx);
      const passkey = await passkeys.finishRegistration(
        me.userId,
        me.sessionId,
        req.responseJson,
        req.name,
        ctx.values.get(callerKey),
      );
      return { passkey: passkeyMessage(passkey) };
    },

    async listPasskeys(_req, ctx) {
      return { passkeys: (await passkeys.list(caller(ctx).userId)).map(passkeyMessage) };
    },

    async deletePasskey(req, ctx) {
      await passkeys.remove(caller(ctx).userId, req.passkeyId, ctx.values.get(callerKey));
      return {};
    },
  } satisfies ServiceImpl<typeof AccountService>;
}
