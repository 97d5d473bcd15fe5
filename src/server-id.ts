import { isIP } from "node:net";

/**
 * Homeserver IDs (`domain:port`), as settings and federation both read them.
 * Pure parsing: no network, no policy.
 */

/** A server ID taken apart. */
export interface ParsedServerId {
  readonly scheme: "http" | "https" | undefined;
  /** Host as written in a URL: a name, an IPv4 address or a bracketed IPv6 address. */
  readonly host: string;
  readonly port: number;
  /** `host:port`, the host lower-cased. */
  readonly canonical: string;
}

const serverIdPattern =
  /^(?:(https?):\/\/)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?\/?$/;

/**
 * Parses `host:port`, `[v6]:port`, and the same with an `http://` or
 * `https://` prefix, where the port defaults to the scheme's (clients do send
 * IDs with schemes). Undefined when `id` is not a server ID.
 */
export function parseServerId(id: string): ParsedServerId | undefined {
  const match = serverIdPattern.exec(id.trim());
  if (!match) return undefined;
  const scheme = match[1] as "http" | "https" | undefined;
  const host = (match[2] ?? "").toLowerCase();
  const portText = match[3] ?? (scheme === "https" ? "443" : scheme === "http" ? "80" : undefined);
  const port = Number(portText);
  if (portText === undefined || port < 1 || port > 65535) return undefined;
  if (host.startsWith("[") && isIP(host.slice(1, -1)) !== 6) return undefined;
  return { scheme, host, port, canonical: `${host}:${port}` };
}

/** A server ID in canonical form, `host:port` with the host lower-cased, or undefined. */
export function canonicalServerId(id: string): string | undefined {
  return parseServerId(id)?.canonical;
}
