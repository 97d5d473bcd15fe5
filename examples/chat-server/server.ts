/**
 * An authenticated endpoint of a chat server: `GET /me` answers who the
 * caller is. The client sends its session token as Harmony clients do (the
 * raw Authorization header); the chat server never reads cadenza's tables or
 * re-implements session expiry: it asks Introspect, which decides exactly as
 * CheckLoggedIn does (and is cached, so it is cheap to call on every request).
 */
import { createServer, type IncomingMessage, type Server } from "node:http";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorSchema } from "../../src/gen/hrpc/v1/hrpc_pb.js";
import type { Cadenza } from "./cadenza-client.js";

/** The Harmony identifier of a failed cadenza call. */
export function harmonyIdentifier(err: unknown): string | undefined {
  return ConnectError.from(err).findDetails(ErrorSchema)[0]?.identifier;
}

function sessionToken(req: IncomingMessage): string {
  const header = req.headers.authorization ?? "";
  return header.replace(/^Bearer\s+/i, "").trim();
}

export function createChatServer(cadenza: Cadenza): Server {
  return createServer(async (req, res) => {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
    };
    if (req.url !== "/me") return reply(404, { error: "not found" });
    try {
      const who = await cadenza.introspect({ sessionToken: sessionToken(req) });
      return reply(200, {
        userId: who.userId,
        username: who.username,
        // Empty for local users; the home server's ID for federated ones.
        homeserver: who.homeserver,
        sessionExpiresAt: who.expiresAt ? timestampDate(who.expiresAt).toISOString() : null,
      });
    } catch (err) {
      // h.blank-session: the token is missing, unknown, expired or revoked.
      // Harmony clients log the user out on exactly this identifier.
      if (harmonyIdentifier(err) === "h.blank-session") {
        return reply(401, { identifier: "h.blank-session" });
      }
      // cadenza unreachable (Unavailable) or a misconfigured INTERNAL_TOKEN
      // (h.bad-internal-token): the chat server's problem, not the client's.
      const code = ConnectError.from(err).code;
      return reply(code === Code.Unavailable ? 503 : 500, { error: "identity service failed" });
    }
  });
}
