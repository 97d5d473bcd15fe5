import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Sessions } from "../auth/sessions.js";
import type { AccountEvent, AccountEvents } from "../events/account-events.js";
import type { Federation } from "../federation/federation.js";
import type {
  HomeserverService,
  StreamAccountEventsResponseSchema,
} from "../gen/cadenza/homeserver/v1/homeserver_pb.js";
import type { UserDirectory } from "../homeserver/user-directory.js";

export type HomeserverServiceDeps = {
  readonly sessions: Pick<Sessions, "authenticate">;
  readonly directory: UserDirectory;
  readonly events: Pick<AccountEvents, "stream">;
  readonly federation: Pick<Federation, "sign" | "verifyToken">;
};

/** An account event as the wire carries it. */
function toEventMessage({
  cursor,
  userId,
  occurredAt,
  event,
}: AccountEvent): MessageInitShape<typeof StreamAccountEventsResponseSchema> {
  const base = { cursor, userId, occurredAt: timestampFromMs(occurredAt) };
  switch (event.kind) {
    case "registered":
      return { ...base, event: { case: "registered", value: { username: event.username } } };
    case "federated_user_created":
      return {
        ...base,
        event: {
          case: "federatedUserCreated",
          value: {
            homeserver: event.homeserver,
            foreignUserId: event.foreignUserId,
            username: event.username,
          },
        },
      };
    case "username_changed":
      return {
        ...base,
        event: {
          case: "usernameChanged",
          value: { oldUsername: event.oldUsername, username: event.username },
        },
      };
    case "sessions_revoked":
      return {
        ...base,
        event: { case: "sessionsRevoked", value: { sessionIds: [...event.sessionIds] } },
      };
    case "second_factor_changed":
      return {
        ...base,
        event: {
          case: "secondFactorChanged",
          value: { enabled: event.enabled, byOperator: event.byOperator },
        },
      };
    case "passkeys_changed":
      return {
        ...base,
        event: {
          case: "passkeysChanged",
          value: {
            added: event.added,
            passkeyCount: event.passkeys,
            byOperator: event.byOperator,
          },
        },
      };
    case "disabled":
      return { ...base, event: { case: "disabled", value: {} } };
    case "enabled":
      return { ...base, event: { case: "enabled", value: {} } };
    case "deleted":
      return { ...base, event: { case: "deleted", value: {} } };
  }
}

/**
 * cadenza.homeserver.v1.HomeserverService, for the homeserver's own services
 * on the internal port: decode, call the domain, encode.
 */
export function createHomeserverServiceImpl({
  sessions,
  directory,
  events,
  federation,
}: HomeserverServiceDeps) {
  return {
    async introspect(req) {
      // The same check CheckLoggedIn makes: one code path, one cache.
      const s = await sessions.authenticate(req.sessionToken);
      return {
        userId: s.userId,
        username: s.user.username,
        homeserver: s.user.homeserver ?? "",
        foreignUserId: s.user.foreignUserId,
        createdAt: timestampFromMs(s.createdAt),
        lastUsedAt: timestampFromMs(s.lastSeenAt),
        expiresAt: timestampFromMs(s.expiresAt),
        sessionId: s.sessionId,
      };
    },

    async getUsers(req) {
      const { users, cursor } = await directory.get(req.userIds);
      return {
        cursor,
        users: users.map((u) => ({
          userId: u.userId,
          username: u.username,
          homeserver: u.homeserver,
          foreignUserId: u.foreignUserId,
          createdAt: timestampFromMs(u.createdAt),
          disabled: u.disabled,
        })),
      };
    },

    async *streamAccountEvents(req, ctx) {
      for await (const event of events.stream(req.after, ctx.signal)) {
        yield toEventMessage(event);
      }
    },

    async signToken(req) {
      return federation.sign(req.data);
    },

    async verifyToken(req) {
      return { data: await federation.verifyToken(req.serverId, req.token) };
    },
  } satisfies ServiceImpl<typeof HomeserverService>;
}
