import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { type AccountAdmin, adminErrors } from "../auth/account-admin.js";
import { authErrors } from "../auth/auth-errors.js";
import type { AuthenticatedSession } from "../auth/sessions.js";
import { HarmonyError } from "../errors.js";
import type { AccountService } from "../gen/cadenza/account/v1/account_pb.js";
import { sessionKey } from "./rpc/interceptors.js";

export type AccountServiceDeps = {
  readonly accountAdmin: Pick<AccountAdmin, "sessions" | "revokeSessions">;
};

/** The caller's session, which the auth interceptor checked (every method requires one). */
function caller(ctx: HandlerContext): AuthenticatedSession {
  const session = ctx.values.get(sessionKey);
  if (!session) throw new HarmonyError(authErrors.blankSession);
  return session;
}

/**
 * cadenza.account.v1.AccountService on the public port: a user's own
 * sessions. Revocation emits `sessions_revoked` and reaches every replica's
 * session cache at once.
 */
export function createAccountServiceImpl({ accountAdmin }: AccountServiceDeps) {
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
      const ended = await accountAdmin.revokeSessions(me.userId, [req.sessionId]);
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
  } satisfies ServiceImpl<typeof AccountService>;
}
