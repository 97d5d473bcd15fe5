import { readFileSync } from "node:fs";
import { isIPv6, type Server, type Socket } from "node:net";
import type { Logger } from "pino";

/**
 * How many connections may be open, in total and from one client address.
 * A connection over either limit is closed as soon as it is accepted, before
 * a byte of it is read.
 */
export interface ConnectionLimitOptions {
  /** Open connections at most (the listening server's `maxConnections`). */
  readonly maxConnections: number;
  /** Open connections at most from one client address (an IPv6 /64); 0 for no limit. */
  readonly maxPerAddress: number;
  /**
   * Addresses the per-address limit does not apply to, such as trusted reverse
   * proxies that carry many clients' connections. Default: none.
   */
  readonly exempt?: (address: string) => boolean;
  readonly logger: Logger;
}

export interface ConnectionLimits {
  /** Applies the total limit to a listening server (Node refuses beyond it before making a socket). */
  guard(server: Server): void;
  /** Counts an accepted socket against its address; false (and nothing counted) when it must be refused. */
  admit(socket: Socket): boolean;
}

/** Refusals are logged once when a burst starts, then summed up once per this window. */
const REFUSAL_LOG_WINDOW_MS = 10_000;

/** File descriptors kept free for the database, logs and the like beyond MAX_CONNECTIONS. */
const RESERVED_FILES = 64;

/**
 * MAX_CONNECTIONS, lowered to leave {@link RESERVED_FILES} of the process's
 * open-file limit free: past the limit, accepting fails (EMFILE) and so does
 * everything else that opens a file or socket, the database included.
 */
function fittingFileLimit(max: number, files: number | undefined, logger: Logger): number {
  if (files === undefined || max + RESERVED_FILES <= files) return max;
  const fitting = Math.max(1, files - RESERVED_FILES);
  logger.warn(
    { maxConnections: max, openFileLimit: files, lowered: fitting },
    `MAX_CONNECTIONS lowered to ${fitting} to fit the open-file limit (ulimit -n ${files})`,
  );
  return fitting;
}

export function createConnectionLimits(options: ConnectionLimitOptions): ConnectionLimits {
  const { maxPerAddress, logger } = options;
  const maxConnections = fittingFileLimit(options.maxConnections, openFileLimit(), logger);
  const exempt = options.exempt ?? (() => false);
  const perAddress = new Map<string, number>();
  const refused = createRefusalLog(logger, { maxConnections, maxPerAddress });

  return {
    guard(server) {
      server.maxConnections = maxConnections;
      server.on("drop", (data?: { remoteAddress?: string }) =>
        refused("total", clientAddress(data?.remoteAddress)),
      );
    },

    admit(socket) {
      const address = clientAddress(socket.remoteAddress);
      // Already gone (reset while being accepted): nothing to serve.
      if (address === undefined) return false;
      if (maxPerAddress === 0 || exempt(address)) return true;
      const key = addressKey(address);
      const open = perAddress.get(key) ?? 0;
      if (open >= maxPerAddress) {
        refused("address", address);
        return false;
      }
      perAddress.set(key, open + 1);
      socket.once("close", () => {
        const left = (perAddress.get(key) ?? 1) - 1;
        if (left === 0) perAddress.delete(key);
        else perAddress.set(key, left);
      });
      return true;
    },
  };
}

type RefusalReason = "total" | "address";

/**
 * Logs refused connections at `warn` once per burst rather than once per
 * socket: the first refusal at once, then at most one summary per window while
 * refusals go on. A flood cannot flood the log.
 */
function createRefusalLog(
  logger: Logger,
  limits: { maxConnections: number; maxPerAddress: number },
): (reason: RefusalReason, address: string | undefined) => void {
  let burst: { total: number; address: number; addresses: Set<string> } | undefined;

  const endWindow = (): void => {
    const counted = burst;
    burst = undefined;
    if (!counted || counted.total + counted.address === 0) return;
    logger.warn(
      {
        refused: counted.total + counted.address,
        overTotal: counted.total,
        overAddress: counted.address,
        addresses: [...counted.addresses].slice(0, 10),
        ...limits,
      },
      `refused ${counted.total + counted.address} more connections in ${REFUSAL_LOG_WINDOW_MS / 1000} s (connection limits)`,
    );
    // Refusals went on: keep summing them up, one line per window.
    burst = { total: 0, address: 0, addresses: new Set() };
    setTimeout(endWindow, REFUSAL_LOG_WINDOW_MS).unref();
  };

  return (reason, address) => {
    if (burst) {
      burst[reason]++;
      if (address !== undefined && burst.addresses.size < 100) burst.addresses.add(address);
      return;
    }
    logger.warn(
      { reason, address, ...limits },
      reason === "total"
        ? "refusing connections: MAX_CONNECTIONS are open"
        : "refusing connections: MAX_CONNECTIONS_PER_ADDRESS are open from one address",
    );
    burst = { total: 0, address: 0, addresses: new Set() };
    setTimeout(endWindow, REFUSAL_LOG_WINDOW_MS).unref();
  };
}

/** A peer address as clients know it: IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as plain IPv4. */
export function clientAddress(address: string | undefined): string | undefined {
  if (address === undefined || address === "") return undefined;
  return address.toLowerCase().startsWith("::ffff:") && address.includes(".")
    ? address.slice("::ffff:".length)
    : address;
}

/**
 * What the per-address limit counts by: an IPv4 address itself, an IPv6
 * address by its /64 prefix (one host is routinely given a whole /64, so
 * counting single IPv6 addresses would limit nothing).
 */
export function addressKey(address: string): string {
  if (!isIPv6(address)) return address;
  const bare = address.split("%", 1)[0] ?? address;
  const [head = "", tail] = bare.includes("::") ? bare.split("::", 2) : [bare, undefined];
  const groups = (part: string): string[] =>
    part === "" ? [] : part.split(":").flatMap((g) => (g.includes(".") ? ["0", "0"] : [g]));
  const first = groups(head);
  const last = tail === undefined ? [] : groups(tail);
  const all = [...first, ...Array<string>(8 - first.length - last.length).fill("0"), ...last];
  return `${all
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(":")}::/64`;
}

/**
 * The process's soft limit on open files, where the system says (Linux), so
 * start-up can warn when MAX_CONNECTIONS could run it out.
 */
export function openFileLimit(): number | undefined {
  try {
    const limits = readFileSync("/proc/self/limits", "utf8");
    const soft = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
    return soft === undefined ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}
