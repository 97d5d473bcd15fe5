import { BlockList, isIP } from "node:net";
import type { Caller } from "../caller.js";

/**
 * The client's address as cadenza believes it: the TCP peer, unless the peer
 * is a trusted proxy, in which case the rightmost address in
 * `X-Forwarded-For` (or `Forwarded: for=`) that is not itself a trusted
 * proxy. Headers from any other peer are ignored, so a client cannot choose
 * its own address.
 */
export type ClientAddressOf = (
  peer: string | undefined,
  headers: Readonly<Record<string, string | string[] | undefined>>,
) => string;

/** An address in one canonical form: IPv4-mapped IPv6 as IPv4, no brackets, no zone. */
export function normalizeAddress(address: string): string | undefined {
  let a = address.trim();
  if (a.startsWith("[")) a = a.slice(1, a.indexOf("]") === -1 ? undefined : a.indexOf("]"));
  a = a.split("%", 1)[0] ?? "";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  if (mapped?.[1]) a = mapped[1];
  return isIP(a) === 0 ? undefined : a.toLowerCase();
}

/** The addresses named in `Forwarded` headers' `for=` parameters (RFC 7239), in order. */
function forwardedFor(values: readonly string[]): string[] {
  const out: string[] = [];
  for (const value of values) {
    for (const element of value.split(",")) {
      for (const pair of element.split(";")) {
        const [name, raw] = pair.split("=", 2);
        if (name?.trim().toLowerCase() !== "for" || raw === undefined) continue;
        let v = raw.trim().replace(/^"|"$/g, "");
        // `for="[2001:db8::1]:4711"` or `for=192.0.2.60:8080`
        if (v.startsWith("[")) v = v.slice(1, v.indexOf("]"));
        else if (/^\d+\.\d+\.\d+\.\d+:\d+$/.test(v)) v = v.slice(0, v.lastIndexOf(":"));
        out.push(v);
      }
    }
  }
  return out;
}

const asList = (header: string | string[] | undefined): string[] =>
  header === undefined ? [] : Array.isArray(header) ? header : [header];

export function createClientAddressOf(trustedProxies: readonly string[]): ClientAddressOf {
  const trusted = new BlockList();
  for (const cidr of trustedProxies) {
    const [net = "", bits = ""] = cidr.split("/");
    trusted.addSubnet(net, Number(bits), isIP(net) === 6 ? "ipv6" : "ipv4");
  }
  const isTrusted = (a: string): boolean => trusted.check(a, isIP(a) === 6 ? "ipv6" : "ipv4");

  return (peer, headers) => {
    const direct = normalizeAddress(peer ?? "") ?? "unknown";
    if (trustedProxies.length === 0 || direct === "unknown" || !isTrusted(direct)) return direct;
    const xff = asList(headers["x-forwarded-for"]).flatMap((v) => v.split(","));
    const hops = xff.length > 0 ? xff : forwardedFor(asList(headers.forwarded));
    // From the right: the first hop not added by a proxy we trust is the client.
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = normalizeAddress(hops[i] ?? "");
      if (hop === undefined) return direct; // a malformed hop: believe nothing past it
      if (!isTrusted(hop)) return hop;
    }
    const first = normalizeAddress(hops[0] ?? "");
    return first ?? direct;
  };
}

/** The Caller of a Node request. */
export function callerOf(
  addressOf: ClientAddressOf,
  peer: string | undefined,
  headers: Readonly<Record<string, string | string[] | undefined>>,
): Caller {
  const ua = headers["user-agent"];
  const userAgent = typeof ua === "string" && ua !== "" ? ua.slice(0, 256) : undefined;
  return { address: addressOf(peer, headers), userAgent };
}
