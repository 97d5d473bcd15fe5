import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import { requestFormat } from "../rpc/protocols.js";

/** What hRPC (PROTOCOL.md §7) calls look like on the wire, and which requests are its. */

export const HRPC_CONTENT_TYPE = "application/hrpc";
export const SUBPROTOCOL = "hrpc1";
export const hrpcHeaders = { "content-type": HRPC_CONTENT_TYPE, "hrpc-version": "1" } as const;

export type NodeRequest = IncomingMessage | Http2ServerRequest;

/** `application/hrpc`, with or without parameters, and nothing else. */
export function isHrpcContentType(contentType: string): boolean {
  const bare = contentType.split(";", 1)[0]?.trim().toLowerCase();
  return bare === HRPC_CONTENT_TYPE;
}

/** A request URL's path, without the query. */
export function pathOf(url: string | undefined): string {
  const raw = url ?? "/";
  const q = raw.indexOf("?");
  return q === -1 ? raw : raw.slice(0, q);
}

/**
 * Whether hRPC's unary transport serves a request: its Content-Type is
 * hRPC's, or it is sent to a method path with a Content-Type none of the
 * Connect-family protocols names (hRPC then answers it as malformed, the
 * most useful answer for a Harmony client with a wrong header).
 */
export function claimsUnary(req: NodeRequest, isMethodPath: (path: string) => boolean): boolean {
  const contentType = req.headers["content-type"] ?? "";
  if (isHrpcContentType(contentType)) return true;
  return isMethodPath(pathOf(req.url)) && requestFormat(contentType) === undefined;
}
