import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Audit } from "../audit.js";
import type { AccountAdmin, AdminUser, SessionInfo } from "../auth/account-admin.js";
import { adminErrors } from "../auth/account-admin.js";
import type { Invite, Invites } from "../auth/invites.js";
import type { Passkeys } from "../auth/passkeys.js";
import { HarmonyError } from "../errors.js";
import type { ServerKey, ServerKeys } from "../federation/server-keys.js";
import type { AdminService } from "../gen/cadenza/admin/v1/admin_pb.js";
import { passkeyMessage } from "./account-service.js";

export type AdminServiceDeps = {
  readonly accountAdmin: AccountAdmin;
  readonly invites: Invites;
  readonly passkeys: Pick<Passkeys, "list" | "removeByOperator">;
  readonly serverKeys: Pick<ServerKeys, "current" | "rotate">;
  readonly audit: Audit;
};

const user = (u: AdminUser) => ({
  userId: u.userId,
  username: u.username,
  email: u.email,
  homeserver: u.homeserver,
  foreignUserId: u.foreignUserId,
  createdAt: timestampFromMs(u.createdAt),
  ...(u.disabledAt === undefined ? {} : { disabledAt: timestampFromMs(u.disabledAt) }),
  sessionCount: u.sessionCount,
  totpEnabled: u.totpEnabled,
  passkeyCount: u.passkeyCount,
});

const session = (s: SessionInfo) => ({
  sessionId: s.sessionId,
  createdAt: timestampFromMs(s.createdAt),
  lastUsedAt: timestampFromMs(s.lastUsedAt),
  expiresAt: timestampFromMs(s.expiresAt),
  clientAddress: s.clientAddress,
  userAgent: s.userAgent,
});

const invite = (i: Invite) => ({
  inviteId: i.inviteId,
  note: i.note,
  maxUses: i.maxUses,
  uses: i.uses,
  createdAt: timestampFromMs(i.createdAt),
  expiresAt: timestampFromMs(i.expiresAt),
  ...(i.revokedAt === undefined ? {} : { revokedAt: timestampFromMs(i.revokedAt) }),
});

const key = (k: ServerKey) => ({
  keyId: k.id,
  publicKey: k.publicKey,
  createdAt: timestampFromMs(k.createdAt),
  encrypted: k.encrypted,
});

/**
 * cadenza.admin.v1.AdminService on the internal port: decode, call the
 * domain, encode. The domain emits each change's account event and audit line.
 */
export function createAdminServiceImpl({
  accountAdmin,
  invites,
  passkeys,
  serverKeys,
  audit,
}: AdminServiceDeps) {
  return {
    async listUsers(req) {
      const page = await accountAdmin.list(req.query, req.pageSize, req.pageToken);
      return { users: page.users.map(user), nextPageToken: page.nextPageToken };
    },
    async getUser(req) {
      switch (req.user.case) {
        case "userId":
          return { user: user(await accountAdmin.get({ userId: req.user.value })) };
        case "username":
          return { user: user(await accountAdmin.get({ username: req.user.value })) };
        default:
          throw new HarmonyError(adminErrors.unknownUser, {
            message: "name the user by user_id or username",
          });
      }
    },
    async disableUser(req) {
      return { user: user(await accountAdmin.disable(req.userId)) };
    },
    async enableUser(req) {
      return { user: user(await accountAdmin.enable(req.userId)) };
    },
    async deleteUser(req) {
      await accountAdmin.delete(req.userId);
      return {};
    },
    async disableTotp(req) {
      return { user: user(await accountAdmin.disableTotp(req.userId)) };
    },
    async listPasskeys(req) {
      await accountAdmin.get({ userId: req.userId });
      return { passkeys: (await passkeys.list(req.userId)).map(passkeyMessage) };
    },
    async deletePasskeys(req) {
      await accountAdmin.get({ userId: req.userId });
      const ids = req.passkeyIds.length === 0 ? undefined : req.passkeyIds;
      return { passkeyIds: await passkeys.removeByOperator(req.userId, ids) };
    },
    async renameUser(req) {
      return { user: user(await accountAdmin.rename(req.userId, req.username)) };
    },
    async listSessions(req) {
      return { sessions: (await accountAdmin.sessions(req.userId)).map(session) };
    },
    async revokeSessions(req) {
      const ids = req.sessionIds.length === 0 ? undefined : req.sessionIds;
      return { sessionIds: await accountAdmin.revokeSessions(req.userId, ids) };
    },
    async createInvite(req) {
      const created = await invites.create({
        ...(req.maxUses === 0 ? {} : { maxUses: req.maxUses }),
        ...(req.validForSeconds === 0n ? {} : { validForMs: Number(req.validForSeconds) * 1000 }),
        note: req.note,
      });
      return { invite: invite(created.invite), code: created.code };
    },
    async listInvites(req) {
      return { invites: (await invites.list(req.includeInactive)).map(invite) };
    },
    async revokeInvite(req) {
      return { invite: invite(await invites.revoke(req.inviteId)) };
    },
    async getServerKey() {
      return { key: key(serverKeys.current()) };
    },
    async rotateServerKey() {
      const rotated = await serverKeys.rotate();
      audit.record("key.rotated", { keyId: rotated.id });
      return { key: key(rotated) };
    },
  } satisfies ServiceImpl<typeof AdminService>;
}
