import { lookup as dnsLookup } from "node:dns/promises";
import type { LookupFunction } from "node:net";
import { BlockList, isIP } from "node:net";
import { HarmonyError } from "../errors.js";
import { parseServerId } from "../server-id.js";
import { federationErrors } from "./federation-errors.js";

// Addresses no federation request may reach unless FEDERATION_ALLOW_INSECURE:
// loopback, private, link-local, unique-local, and other non-public ranges.
const nonPublic = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  nonPublic.addSubnet(net, prefix, "ipv4");
}
for (const [net, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
  ["64:ff9b::", 96],
] as const) {
  nonPublic.addSubnet(net, prefix, "ipv6");
}

/** Whether an IP address is on the public internet (IPv4-mapped IPv6 is judged as IPv4). */
export function isPublicAddress(address: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1]) return isPublicAddress(mapped[1]);
  const family = isIP(address);
  if (family === 0) return false;
  return !nonPublic.check(address, family === 4 ? "ipv4" : "ipv6");
}

/** Where to reach a homeserver, with the address already vetted. */
export interface ResolvedServer {
  readonly canonical: string;
  readonly baseUrl: string;
  /** Connects to the vetted address only, so DNS cannot change it between check and use. */
  readonly lookup: LookupFunction | undefined;
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

/**
 * Resolves a checked server's name and vets every address it resolves to
 * (unless `allowInsecure`); the returned lookup pins the connection to the
 * vetted address, so DNS cannot change it between the check and the use.
 */
export async function resolveServer(
  server: CheckedServer,
  allowInsecure: boolean,
): Promise<LookupFunction | undefined> {
  if (allowInsecure || server.hostname === undefined) return undefined;
  let addresses: { address: string; family: number }[];
  try {
    addresses = await dnsLookup(server.hostname, { all: true });
  } catch (err) {
    throw new HarmonyError(federationErrors.homeserverUnavailable, {
      message: `could not resolve ${server.hostname}: ${(err as Error).message}`,
      cause: err,
    });
  }
  const pinned = addresses[0];
  const blocked = addresses.find((a) => !isPublicAddress(a.address));
  if (blocked || !pinned) {
    refuse(
      server.canonical,
      `${server.hostname} resolves to ${blocked?.address ?? "nothing"}, which is not a public address`,
    );
  }
  return (_hostname, options, callback) => {
    if ((options as { all?: boolean }).all) {
      (callback as (e: null, a: { address: string; family: number }[]) => void)(null, [pinned]);
    } else {
      callback(null, pinned.address, pinned.family);
    }
  };
}
