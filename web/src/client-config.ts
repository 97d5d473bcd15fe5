/**
 * Which cadenza the page talks to, and how. In order:
 *
 * 1. `<meta name="cadenza-server" content="https://auth.example.org">` in
 *    index.html (for a copy of the page hosted on another origin: edit the
 *    built file, no rebuild needed): a copy that names its server is pinned
 *    to it, and a link's `?server=` cannot send what users type elsewhere;
 * 2. `?server=https://auth.example.org` in the page's URL, when the meta is
 *    empty (as built);
 * 3. the page's own origin (cadenza serving its own page).
 *
 * `?protocol=connect` switches from gRPC-Web (the default) to the Connect
 * protocol. A server other than the page's own origin must list the page's
 * origin in its CORS_ORIGINS, and the page's Content-Security-Policy must
 * allow it in connect-src: the page cadenza itself serves allows only
 * cadenza's own origin.
 */

export type Protocol = "grpc-web" | "connect";

export interface ClientConfig {
  /** The base URL calls go to: an origin, perhaps with a path prefix, without a trailing slash. */
  readonly server: string;
  readonly protocol: Protocol;
}

export type ClientConfigResult =
  | { readonly ok: true; readonly config: ClientConfig }
  | { readonly ok: false; readonly problem: string };

function baseUrlOf(text: string): string | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return undefined;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return undefined;
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "") {
    return undefined;
  }
  return `${url.origin}${url.pathname}`.replace(/\/+$/, "");
}

/** Reads the page's configuration from its URL and its `cadenza-server` meta tag. */
export function clientConfig(pageUrl: string, metaServer: string | null): ClientConfigResult {
  const page = new URL(pageUrl);
  const given = metaServer?.trim() || page.searchParams.get("server");
  const server = given === null ? page.origin : baseUrlOf(given);
  if (server === undefined) {
    return {
      ok: false,
      problem: `"${given}" is not a server address: give its http:// or https:// URL, such as https://auth.example.org`,
    };
  }
  const asked = page.searchParams.get("protocol");
  if (asked !== null && asked !== "grpc-web" && asked !== "connect") {
    return { ok: false, problem: `protocol "${asked}" is not grpc-web or connect` };
  }
  return { ok: true, config: { server, protocol: asked ?? "grpc-web" } };
}
