import { lookup as dnsLookup } from "node:dns/promises";
import { createRequire } from "node:module";
import type { LookupFunction } from "node:net";
import { isIP } from "node:net";
import type { IPv4, IPv6 } from "ipaddr.js";
import { HarmonyError } from "../errors.js";
import { parseServerId } from "../server-id.js";
import { federationErrors } from "./federation-errors.js";

// ipaddr.js is CommonJS whose types are an ambient `export =`, which this
// tsconfig (no allowSyntheticDefaultImports) cannot default-import.
const ipaddr: typeof import("ipaddr.js") = createRequire(import.meta.url)("ipaddr.js");

/*
 * Which addresses a federation request may reach (unless
 * FEDERATION_ALLOW_INSECURE): those the IANA IPv4 and IPv6 Special-Purpose
 * Address Registries (RFC 6890 and their later entries) do not mark as not
 * globally reachable. ipaddr.js names the registries' blocks (`range()`); what
 * it does not know is spelt out below. The ranges accepted are an allowlist,
 * so a block a later ipaddr.js names anew is refused until it is judged here.
 */

/** ipaddr.js ranges the IPv4 registry marks globally reachable: AS112 (RFC 7534/7535), AMT (RFC 7450). */
const publicV4Ranges: ReadonlySet<string> = new Set(["unicast", "as112", "amt"]);

/**
 * ipaddr.js ranges the IPv6 registry marks globally reachable: AMT 2001:3::/32,
 * AS112-v6 (2001:4:112::/48, 2620:4f:8000::/48), ORCHIDv2 2001:20::/28 and
 * drone DETs 2001:30::/28. Everything else it names is refused, among them
 * Teredo 2001::/32 and 6to4 2002::/16 (the registry says N/A: where they lead
 * is a relay's choice, not the address's), benchmarking, the deprecated
 * ORCHID, documentation (2001:db8::/32, 3fff::/20) and the rest of 2001::/23.
 */
const publicV6Ranges: ReadonlySet<string> = new Set([
  "unicast",
  "amt",
  "as112v6",
  "orchid2",
  "droneRemoteIdProtocolEntityTags",
]);

/**
 * Globally reachable addresses inside blocks that are not, which ipaddr.js
 * files under the enclosing block: PCP anycast (RFC 7723) and TURN anycast
 * (RFC 8155), in 192.0.0.0/24 and in 2001::/23.
 */
const reachableV4 = [ipaddr.IPv4.parseCIDR("192.0.0.9/32"), ipaddr.IPv4.parseCIDR("192.0.0.10/32")];
const reachableV6 = [
  ipaddr.IPv6.parseCIDR("2001:1::1/128"),
  ipaddr.IPv6.parseCIDR("2001:1::2/128"),
];

/**
 * IANA's IPv6 Address Space registry allocates only 2000::/3 as global
 * unicast; the rest is reserved, unique-local, link-local or multicast. This
 * refuses what ipaddr.js files as plain unicast although it is not: the
 * IPv4-compatible ::/96 (`::7f00:1`, deprecated by RFC 4291), the
 * IPv4-translated ::ffff:0:0:0/96 (RFC 6145, `::ffff:0:7f00:1`), 0100::/8
 * beyond the discard prefix, and whatever is assigned outside 2000::/3 later.
 */
const globalUnicast = ipaddr.IPv6.parseCIDR("2000::/3");

/**
 * The NAT64 well-known prefix (RFC 6052), which the registry marks globally
 * reachable, is judged by the IPv4 address in its last 32 bits, since that is
 * where a translator sends it (64:ff9b::a00:1 is 10.0.0.1 behind the
 * translator). The local-use 64:ff9b:1::/48 (RFC 8215) and the IPv4-mapped
 * ::ffff:0:0/96 are not globally reachable, and refused whatever they embed.
 */
const nat64 = ipaddr.IPv6.parseCIDR("64:ff9b::/96");

/**
 * Whether an IP address is one a federation request may reach, judged
 * against the IANA special-purpose registries: loopback, private, shared,
 * link-local, documentation, benchmarking, multicast and reserved addresses
 * are refused in every spelling, and so are IPv6 addresses that embed an IPv4
 * one (IPv4-compatible, -mapped and -translated, 6to4, Teredo) except NAT64's
 * well-known prefix in front of a public IPv4 address. Addresses with a zone
 * (`fe80::1%eth0`) and anything that is not an IP address are refused.
 */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0 || address.includes("%")) return false;
  if (family === 4) return isPublicV4(ipaddr.IPv4.parse(address));
  return isPublicV6(ipaddr.IPv6.parse(hexTail(address)));
}

function isPublicV4(address: IPv4): boolean {
  if (reachableV4.some((block) => address.match(block))) return true;
  return publicV4Ranges.has(address.range());
}

function isPublicV6(address: IPv6): boolean {
  if (address.match(nat64)) {
    const high = address.parts[6] ?? 0;
    const low = address.parts[7] ?? 0;
    return isPublicV4(new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]));
  }
  if (!address.match(globalUnicast)) return false;
  if (reachableV6.some((block) => address.match(block))) return true;
  return publicV6Ranges.has(address.range());
}

/**
 * An IPv6 address with a dotted IPv4 tail rewritten as two hex groups.
 * ipaddr.js reads `::a.b.c.d` as the IPv4-mapped `::ffff:a.b.c.d`, but RFC
 * 4291 makes it the IPv4-compatible `::xxxx:xxxx`. `isIP` has already checked
 * that the four parts are decimal octets.
 */
function hexTail(address: string): string {
  const dotted = /^(.*:)(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(address);
  if (!dotted) return address;
  const [a, b, c, d] = dotted.slice(2).map(Number) as [number, number, number, number];
  return `${dotted[1]}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
}

/** A server ID that passed the checks that need no network. */
export interface CheckedServer {
  readonly canonical: string;
  readonly baseUrl: string;
  /** The host to resolve, or undefined when it is an IP address (already vetted). */
  readonly hostname: string | undefined;
}

/**
 * Turns a server ID into a base URL, refusing what can be refused without
 * the network. `domain:port` becomes `https://domain:port`; an ID with a
 * scheme is used as given. Unless `allowInsecure`, plain http and non-public
 * IP addresses are refused with `h.host-not-allowed`. With `allowInsecure`, a
 * bare ID means `http://`.
 */
export function checkServer(id: string, allowInsecure: boolean): CheckedServer {
  const parsed = parseServerId(id);
  if (!parsed) throw new HarmonyError(federationErrors.invalidServerId);
  const scheme = parsed.scheme ?? (allowInsecure ? "http" : "https");
  const baseUrl = `${scheme}://${parsed.host}:${parsed.port}`;
  const literal = parsed.host.startsWith("[") ? parsed.host.slice(1, -1) : parsed.host;
  const isLiteral = isIP(literal) !== 0;
  if (!allowInsecure) {
    if (scheme === "http") refuse(parsed.canonical, "plain http is not allowed");
    if (isLiteral && !isPublicAddress(literal)) {
      refuse(parsed.canonical, `${literal} is not a public address`);
    }
  }
  return { canonical: parsed.canonical, baseUrl, hostname: isLiteral ? undefined : literal };
}

function refuse(canonical: string, why: string): never {
  throw new HarmonyError(federationErrors.hostNotAllowed, {
    message: `federation with ${canonical} is not allowed: ${why}`,
  });
}

/** Resolves a host name to every address it has, as `dns.lookup` with `all: true` does. */
export type ResolveHost = (
  hostname: string,
) => Promise<readonly { readonly address: string; readonly family: number }[]>;

/** The system resolver (getaddrinfo: /etc/hosts, then DNS). */
export const systemResolveHost: ResolveHost = (hostname) => dnsLookup(hostname, { all: true });

/**
 * Resolves a checked server's name with `resolveHost` and, unless
 * `allowInsecure`, vets every address it resolves to. The returned lookup
 * pins the connection to those addresses, so DNS cannot change them between
 * the check and the use; undefined when the ID is an IP address (vetted by
 * {@link checkServer}). A failure throws a plain Error that names the host
 * and addresses, for the log: what resolving learnt must not reach the
 * caller, or LoginFederated would tell anyone what a name resolves to.
 */
export async function resolveServer(
  server: CheckedServer,
  options: { allowInsecure: boolean; resolveHost: ResolveHost },
): Promise<LookupFunction | undefined> {
  if (server.hostname === undefined) return undefined;
  let addresses: readonly { address: string; family: number }[];
  try {
    addresses = await options.resolveHost(server.hostname);
  } catch (err) {
    throw new Error(`could not resolve ${server.hostname}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const pinned = addresses[0];
  if (!pinned) throw new Error(`${server.hostname} resolves to no address`);
  if (!options.allowInsecure) {
    const blocked = addresses.filter((a) => !isPublicAddress(a.address)).map((a) => a.address);
    if (blocked.length > 0) {
      throw new Error(
        `${server.hostname} resolves to ${blocked.join(", ")}, which is not a public address`,
      );
    }
  }
  // Asked for all (as connecting with autoSelectFamily does), it offers every
  // vetted address, so IPv6 and IPv4 can be tried in turn.
  return (_hostname, lookupOptions, callback) => {
    if ((lookupOptions as { all?: boolean }).all) {
      (callback as (e: null, a: { address: string; family: number }[]) => void)(null, [
        ...addresses,
      ]);
    } else {
      callback(null, pinned.address, pinned.family);
    }
  };
}
