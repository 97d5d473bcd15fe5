import { isIP } from "node:net";
import { canonicalServerId } from "./server-id.js";

/**
 * The parsers settings are declared with (src/settings.ts). Each takes the
 * trimmed text of a variable (its default when unset) and returns the value,
 * or throws a {@link SettingProblem} saying what was expected.
 */

/** What was wrong with a setting's value, phrased as what was expected. */
export class SettingProblem extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SettingProblem";
  }
}

export type Parser<T> = (text: string) => T;

const durationUnits: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parses a duration such as `15m`, `30d`, `90s` or `500ms`; a bare number is
 * seconds. Returns undefined for anything else.
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!match) return undefined;
  const unit = durationUnits[match[2] ?? "s"];
  const value = Number(match[1]) * (unit ?? 1000);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Any text, as given. */
export const text: Parser<string> = (value) => value;

/** Text, or undefined when empty. */
export const optionalText: Parser<string | undefined> = (value) =>
  value === "" ? undefined : value;

/** A whole number from `min` to `max`. */
export function int(min: number, max: number): Parser<number> {
  return (value) => {
    const n = /^\d+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new SettingProblem(`expected a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

/** A duration in milliseconds, at least `minMs` (and at most `maxMs`). */
export function duration(minMs: number, maxMs = 2 ** 31 - 1): Parser<number> {
  return (value) => {
    const ms = parseDuration(value);
    if (ms === undefined || ms < minMs || ms > maxMs) {
      throw new SettingProblem(
        `expected a duration from ${minMs} ms to ${maxMs} ms such as 90s, 15m, 12h or 30d`,
      );
    }
    return ms;
  };
}

/** One of a fixed set of words, case-insensitive. */
export function oneOf<const T extends string>(allowed: readonly T[]): Parser<T> {
  return (value) => {
    const lower = value.toLowerCase();
    if (!(allowed as readonly string[]).includes(lower)) {
      throw new SettingProblem(`expected one of ${allowed.join(", ")}`);
    }
    return lower as T;
  };
}

/** `true`/`false` (also `on`/`off`, `yes`/`no`, `1`/`0`). */
export const bool: Parser<boolean> = (value) => {
  const lower = value.toLowerCase();
  if (["true", "on", "yes", "1"].includes(lower)) return true;
  if (["false", "off", "no", "0"].includes(lower)) return false;
  throw new SettingProblem("expected true or false (on or off)");
};

/** A comma-separated list, each item parsed by `item`; empty items are skipped. */
export function list<T>(item: Parser<T>): Parser<readonly T[]> {
  return (value) =>
    Object.freeze(
      value
        .split(",")
        .map((part) => part.trim())
        .filter((part) => part !== "")
        .map(item),
    );
}

/**
 * A homeserver ID, made canonical (`host:port`, host lower-cased); with
 * `allowScheme`, `https://host[:port]` is read as the same ID.
 */
export function serverId(options: { allowScheme: boolean }): Parser<string> {
  return (value) => {
    const canonical =
      !options.allowScheme && value.includes("://") ? undefined : canonicalServerId(value);
    if (canonical === undefined) {
      throw new SettingProblem(`${value} is not a server ID; expected domain:port`);
    }
    return canonical;
  };
}

/** A browser origin (`scheme://host[:port]`), or `*`. */
export const origin: Parser<string> = (value) => {
  if (value !== "*" && !/^https?:\/\/[^/\s]+$/.test(value)) {
    throw new SettingProblem(
      `${value} is not an origin; expected scheme://host[:port] with no path, or *`,
    );
  }
  return value;
};

/** A DNS name as WebAuthn takes an RP ID: lower-case labels, no port, no IP address. */
export const domainName: Parser<string> = (value) => {
  const name = value.toLowerCase();
  const label = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
  if (
    name.length > 253 ||
    !new RegExp(`^${label}(?:\\.${label})*$`).test(name) ||
    /^[\d.]+$/.test(name)
  ) {
    throw new SettingProblem(
      `${value} is not a domain name; expected one such as chat.example.org (no scheme, port or IP address: browsers refuse passkeys for IP addresses)`,
    );
  }
  return name;
};

/** A browser origin for WebAuthn (`https://host[:port]`, or `http://localhost[:port]`). */
export const webOrigin: Parser<string> = (value) => {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (
    url === undefined ||
    !/^https?:$/.test(url.protocol) ||
    url.pathname !== "/" ||
    url.search !== "" ||
    url.hash !== "" ||
    url.username !== "" ||
    value.endsWith("/")
  ) {
    throw new SettingProblem(
      `${value} is not an origin; expected https://host[:port] (or http://localhost[:port]), with no path`,
    );
  }
  return url.origin;
};

/** A postgres:// connection string, or undefined when empty. */
export const postgresUrl: Parser<string | undefined> = (value) => {
  if (value === "") return undefined;
  if (!/^postgres(ql)?:\/\//.test(value)) {
    throw new SettingProblem("expected a postgres:// or postgresql:// connection string");
  }
  return value;
};

/** 32 bytes as 64 hex digits or base64, or undefined when empty. */
export const key32: Parser<Buffer | undefined> = (value) => {
  if (value === "") return undefined;
  const key = /^[0-9a-fA-F]{64}$/.test(value)
    ? Buffer.from(value, "hex")
    : Buffer.from(value, "base64");
  if (key.length !== 32 || !/^[A-Za-z0-9+/=_-]+$/.test(value)) {
    throw new SettingProblem(
      "expected 32 bytes as 64 hex digits or base64 (openssl rand -base64 32)",
    );
  }
  return key;
};

/** A rate: `N/duration` (such as `120/1m`), or `off`. */
export interface Rate {
  readonly points: number;
  readonly durationMs: number;
}

export const rate: Parser<Rate | undefined> = (value) => {
  if (value.toLowerCase() === "off") return undefined;
  const match = /^(\d{1,9})\s*\/\s*(\S+)$/.exec(value);
  const durationMs = match?.[2] === undefined ? undefined : parseDuration(match[2]);
  const points = Number(match?.[1]);
  if (!match || durationMs === undefined || durationMs < 1000 || points < 1) {
    throw new SettingProblem("expected a rate such as 120/1m (at most 120 in any minute), or off");
  }
  return { points, durationMs };
};

/** A whole number from `min` to `max`, or `off` (undefined: no limit). */
export function limit(min: number, max: number): Parser<number | undefined> {
  const whole = int(min, max);
  return (value) => {
    if (value.toLowerCase() === "off") return undefined;
    try {
      return whole(value);
    } catch {
      throw new SettingProblem(`expected a whole number from ${min} to ${max}, or off`);
    }
  };
}

/** A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address. */
export const cidr: Parser<string> = (value) => {
  const [address, bits, ...rest] = value.split("/");
  const family = isIP(address ?? "");
  const max = family === 4 ? 32 : 128;
  const prefix = bits === undefined ? max : Number(bits);
  if (family === 0 || rest.length > 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > max) {
    throw new SettingProblem(`${value} is not an address or CIDR such as 10.0.0.0/8 or fd00::/8`);
  }
  return `${address}/${prefix}`;
};
