import { describe, expect, it } from "vitest";
import { HarmonyError } from "../src/errors.js";
import { checkServer, isPublicAddress } from "../src/federation/server-ids.js";
import { canonicalServerId } from "../src/server-id.js";

describe("server IDs", () => {
  it.each([
    ["chat.example.org:2289", "chat.example.org:2289"],
    ["Chat.Example.ORG:2289", "chat.example.org:2289"],
    ["https://chat.example.org", "chat.example.org:443"],
    ["https://chat.example.org:8443/", "chat.example.org:8443"],
    ["http://chat.example.org", "chat.example.org:80"],
    ["[2001:db8::1]:443", "[2001:db8::1]:443"],
    ["127.0.0.1:2289", "127.0.0.1:2289"],
  ])("%s is %s", (id, canonical) => expect(canonicalServerId(id)).toBe(canonical));

  it.each([
    "",
    "chat.example.org",
    "chat.example.org:0",
    "chat.example.org:70000",
    "ftp://x.org:21",
    "a b:1",
    "[zz::1]:443",
    "x.org:443/path",
  ])("%j is not a server ID", (id) => expect(canonicalServerId(id)).toBeUndefined());

  it("prefixes https, or http in insecure mode, and keeps a given scheme", () => {
    expect(checkServer("chat.example.org:2289", false).baseUrl).toBe(
      "https://chat.example.org:2289",
    );
    expect(checkServer("chat.example.org:2289", true).baseUrl).toBe("http://chat.example.org:2289");
    expect(checkServer("https://chat.example.org:2289", true).baseUrl).toBe(
      "https://chat.example.org:2289",
    );
  });
});

describe("public addresses (IANA special-purpose registries)", () => {
  it.each([
    ["8.8.8.8", "public IPv4"],
    ["1.1.1.1", "public IPv4"],
    ["93.184.216.34", "public IPv4"],
    ["100.63.255.255", "just below 100.64.0.0/10"],
    ["100.128.0.0", "just above 100.64.0.0/10"],
    ["172.15.255.255", "just below 172.16.0.0/12"],
    ["172.32.0.0", "just above 172.16.0.0/12"],
    ["198.17.255.255", "just below 198.18.0.0/15"],
    ["198.20.0.0", "just above 198.18.0.0/15"],
    ["223.255.255.255", "just below 224.0.0.0/4"],
    ["192.0.0.9", "PCP anycast, globally reachable inside 192.0.0.0/24"],
    ["192.0.0.10", "TURN anycast, globally reachable inside 192.0.0.0/24"],
    ["192.31.196.1", "AS112-v4"],
    ["192.52.193.1", "AMT"],
    ["192.175.48.1", "AS112 direct delegation"],
    ["2606:4700:4700::1111", "public IPv6"],
    ["2001:4860:4860::8888", "public IPv6"],
    ["2a00:1450:4001:82b::200e", "public IPv6"],
    ["64:ff9b::808:808", "NAT64 of a public IPv4 address"],
    ["64:ff9b::8.8.8.8", "NAT64 of a public IPv4 address, dotted"],
    ["2001:1::1", "PCP anycast, globally reachable inside 2001::/23"],
    ["2001:1::2", "TURN anycast, globally reachable inside 2001::/23"],
    ["2001:3::1", "AMT"],
    ["2001:4:112::1", "AS112-v6"],
    ["2001:20::1", "ORCHIDv2"],
    ["2001:30::1", "drone remote ID entity tags"],
    ["2620:4f:8000::1", "AS112 direct delegation"],
  ])("%s is public (%s)", (ip) => expect(isPublicAddress(ip)).toBe(true));

  it.each([
    ["0.0.0.0", "this host, 0.0.0.0/8"],
    ["0.1.2.3", "this network, 0.0.0.0/8"],
    ["10.1.2.3", "private, 10.0.0.0/8"],
    ["100.64.0.1", "shared address space, 100.64.0.0/10"],
    ["100.127.255.255", "shared address space, 100.64.0.0/10"],
    ["127.0.0.1", "loopback, 127.0.0.0/8"],
    ["127.255.255.254", "loopback, 127.0.0.0/8"],
    ["169.254.169.254", "link-local, 169.254.0.0/16"],
    ["172.16.0.1", "private, 172.16.0.0/12"],
    ["172.31.255.255", "private, 172.16.0.0/12"],
    ["192.0.0.1", "IETF protocol assignments, 192.0.0.0/24"],
    ["192.0.0.8", "IPv4 dummy address"],
    ["192.0.0.170", "NAT64/DNS64 discovery"],
    ["192.0.2.1", "documentation TEST-NET-1, 192.0.2.0/24"],
    ["192.88.99.1", "deprecated 6to4 relay anycast, 192.88.99.0/24"],
    ["192.168.0.1", "private, 192.168.0.0/16"],
    ["198.18.0.1", "benchmarking, 198.18.0.0/15"],
    ["198.19.255.255", "benchmarking, 198.18.0.0/15"],
    ["198.51.100.1", "documentation TEST-NET-2, 198.51.100.0/24"],
    ["203.0.113.1", "documentation TEST-NET-3, 203.0.113.0/24"],
    ["224.0.0.1", "multicast, 224.0.0.0/4"],
    ["239.255.255.255", "multicast, 224.0.0.0/4"],
    ["240.0.0.1", "reserved, 240.0.0.0/4"],
    ["255.255.255.255", "limited broadcast"],
    ["::", "unspecified, ::/128"],
    ["::1", "loopback, ::1/128"],
    ["::7f00:1", "IPv4-compatible loopback"],
    ["::127.0.0.1", "IPv4-compatible loopback, dotted"],
    ["::8.8.8.8", "IPv4-compatible, deprecated whatever it embeds"],
    ["::ffff:127.0.0.1", "IPv4-mapped loopback"],
    ["::FFFF:7F00:1", "IPv4-mapped loopback, upper-case hex"],
    ["0:0:0:0:0:ffff:a00:1", "IPv4-mapped private, written out"],
    ["::ffff:8.8.8.8", "IPv4-mapped, ::ffff:0:0/96 is not globally reachable"],
    ["::ffff:0:7f00:1", "IPv4-translated loopback"],
    ["::ffff:0:8.8.8.8", "IPv4-translated, outside 2000::/3"],
    ["64:ff9b::7f00:1", "NAT64 of loopback"],
    ["64:ff9b::10.0.0.1", "NAT64 of a private address"],
    ["64:ff9b::a9fe:a9fe", "NAT64 of link-local 169.254.169.254"],
    ["64:ff9b:1::808:808", "local-use NAT64, 64:ff9b:1::/48"],
    ["100::1", "discard-only, 100::/64"],
    ["100:0:0:1::1", "outside 2000::/3"],
    ["2001::1", "Teredo, 2001::/32"],
    ["2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo, 2001::/32"],
    ["2001:2::1", "benchmarking, 2001:2::/48"],
    ["2001:10::1", "deprecated ORCHID, 2001:10::/28"],
    ["2001:1ff::1", "IETF protocol assignments, 2001::/23"],
    ["2001:db8::1", "documentation, 2001:db8::/32"],
    ["2002:7f00:1::", "6to4 of loopback"],
    ["2002:808:808::1", "6to4, 2002::/16 is not asserted globally reachable"],
    ["3fff::1", "documentation, 3fff::/20"],
    ["5f00::1", "segment routing SIDs, 5f00::/16"],
    ["4000::1", "reserved by the IETF, outside 2000::/3"],
    ["fc00::1", "unique-local, fc00::/7"],
    ["fd12:3456::1", "unique-local, fc00::/7"],
    ["fe80::1", "link-local, fe80::/10"],
    ["fe80::1%eth0", "link-local with a zone"],
    ["fec0::1", "deprecated site-local"],
    ["ff02::1", "multicast, ff00::/8"],
    ["ff0e::1", "global-scope multicast, ff00::/8"],
    ["not an ip", "not an address"],
    ["", "not an address"],
    ["127.1", "shorthand IPv4 is not an address here"],
    ["0x7f.0.0.1", "hex IPv4 is not an address here"],
    ["localhost", "a name, not an address"],
  ])("%s is not public (%s)", (ip) => expect(isPublicAddress(ip)).toBe(false));

  it.each([
    "[::7f00:1]:443",
    "[::ffff:0:7f00:1]:443",
    "[2002:7f00:1::]:443",
    "192.0.2.1:443",
    "[100::1]:443",
  ])("checkServer refuses the literal %s, naming the address the caller wrote", (id) => {
    const error = (() => {
      try {
        checkServer(id, false);
      } catch (err) {
        return err;
      }
      throw new Error("expected a refusal");
    })();
    expect(error).toBeInstanceOf(HarmonyError);
    expect((error as HarmonyError).identifier).toBe("h.host-not-allowed");
    expect((error as HarmonyError).message).toMatch(/is not a public address$/);
  });
});
