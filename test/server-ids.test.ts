import { describe, expect, it } from "vitest";
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

describe("public addresses", () => {
  it.each(["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])(
    "%s is public",
    (ip) => expect(isPublicAddress(ip)).toBe(true),
  );
  it.each([
    "127.0.0.1",
    "10.1.2.3",
    "172.31.255.255",
    "192.168.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "::",
    "fd12:3456::1",
    "fe80::1",
    "::ffff:10.0.0.1",
    "not an ip",
  ])("%s is not", (ip) => expect(isPublicAddress(ip)).toBe(false));
});
