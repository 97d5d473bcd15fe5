import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";

/**
 * The request's authority (`Host`, or HTTP/2's `:authority`) checked before
 * any handler runs. connect-node builds each call's URL from it, and a
 * malformed one (`[`, `a b`, `x:99999`) or a missing one made it throw inside
 * connect-fastify, which printed the stack and left Fastify to answer 200
 * with an empty body. Such requests now get 400 here.
 *
 * HTTP/1.0 allows a request without Host; it is served as if it named the
 * address it arrived on (RFC 9112 §3.3: the authority is then the server's
 * own), which is safe because cadenza serves the same on every name.
 */

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

// RFC 3986 authority without userinfo: an IP literal or a reg-name, then an optional port.
const authorityPattern =
  /^(?:\[[0-9a-f:.]+\]|(?:[a-z0-9\-._~!$&'()*+,;=]|%[0-9a-f]{2})+)(?::(\d{0,5}))?$/i;

/** Why `authority` cannot be used as a request's authority, or undefined when it can. */
export function authorityProblem(authority: string | undefined): string | undefined {
  if (authority === undefined || authority === "") return "no Host header";
  const match = authorityPattern.exec(authority);
  const port = match?.[1];
  if (!match || (port !== undefined && port !== "" && Number(port) > 65535)) {
    return "malformed Host header";
  }
  // The URL parser has the last word on IP literals and host names (connect-node uses it).
  return URL.canParse(`http://${authority}`) ? undefined : "malformed Host header";
}

/** `host:port` for a local address, bracketed when IPv6. */
function hostOf(address: string | undefined, port: number | undefined): string | undefined {
  if (address === undefined || port === undefined) return undefined;
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** How many Host field lines an HTTP/1.x request carried (Node keeps only the first). */
function hostLines(req: IncomingMessage): number {
  let n = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]?.toLowerCase() === "host") n++;
  }
  return n;
}

function problemOf(req: Request): string | undefined {
  if ("authority" in req) return authorityProblem(req.authority); // HTTP/2
  const lines = hostLines(req);
  if (lines > 1) return "more than one Host header";
  if (lines === 0 && req.httpVersion === "1.0") {
    const own = hostOf(req.socket.localAddress, req.socket.localPort);
    if (own !== undefined) req.headers.host = own;
  }
  return authorityProblem(req.headers.host);
}

/**
 * Answers a request with an unusable authority in its own protocol's terms
 * (an RPC in its error format, with an identifier); false to leave it to the
 * plain 400.
 */
export type BadHostAnswer = (req: Request, res: Response, problem: string) => boolean;

/**
 * Wraps a request handler so that a request whose authority is missing or
 * malformed is answered `400` instead: by `answer` where it speaks a protocol
 * it knows, else with a short plain-text body.
 */
export function checkingHost<Req extends Request, Res extends Response>(
  handler: (req: Req, res: Res) => void,
  answer?: BadHostAnswer,
): (req: Req, res: Res) => void {
  return (req, res) => {
    const problem = problemOf(req);
    if (problem === undefined) return handler(req, res);
    if (answer?.(req, res, problem)) return;
    const body = `400 Bad Request: ${problem}\n`;
    const headers: Record<string, string | number> = {
      "content-type": "text/plain; charset=utf-8",
      "content-length": Buffer.byteLength(body),
    };
    if (!("authority" in req)) headers.connection = "close";
    (res as ServerResponse).writeHead(400, headers);
    res.end(body);
  };
}
