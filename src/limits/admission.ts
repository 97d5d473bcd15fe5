import type { PasswordHasher } from "../auth/password-hasher.js";
import { HarmonyError } from "../errors.js";
import { limitErrors } from "./limit-errors.js";

/**
 * A bound on work in flight and waiting: beyond `inFlight + queued`, a caller
 * is refused at once rather than queued, so latency cannot grow to minutes
 * nor memory to the machine's size under a flood.
 */
export interface Gate {
  run<T>(work: () => Promise<T>): Promise<T>;
  readonly inFlight: number;
  readonly queued: number;
}

export function createGate(
  limits: { inFlight: number | undefined; queued: number | undefined },
  onRefused: () => void = () => {},
): Gate {
  const inFlight = limits.inFlight ?? Number.POSITIVE_INFINITY;
  const queued = limits.queued ?? Number.POSITIVE_INFINITY;
  let running = 0;
  const waiting: (() => void)[] = [];
  const release = (): void => {
    const next = waiting.shift();
    if (next) next();
    else running--;
  };
  return {
    async run(work) {
      if (running >= inFlight) {
        if (waiting.length >= queued) {
          onRefused();
          throw new HarmonyError(limitErrors.serverBusy, { retryAfterSeconds: 1 });
        }
        // A released slot passes straight to the next waiter.
        await new Promise<void>((resolve) => waiting.push(resolve));
      } else {
        running++;
      }
      try {
        return await work();
      } finally {
        release();
      }
    },
    get inFlight() {
      return running;
    },
    get queued() {
      return waiting.length;
    },
  };
}

/** argon2id through a gate: every hash and verification (dummy ones too) waits its turn. */
export function gatedHasher(inner: PasswordHasher, gate: Gate): PasswordHasher {
  return {
    hash: (password) => gate.run(() => inner.hash(password)),
    verify: (phc, password) => gate.run(() => inner.verify(phc, password)),
    needsRehash: (phc) => inner.needsRehash(phc),
  };
}

/** Open streams per client address and in all, per process. */
export interface StreamSlots {
  /** Takes a slot for `address`, or throws `hrpc.resource-exhausted`; returns its release. */
  acquire(address: string): () => void;
  readonly open: number;
}

export function createStreamSlots(limits: {
  perAddress: number | undefined;
  total: number | undefined;
}): StreamSlots {
  const byAddress = new Map<string, number>();
  let open = 0;
  return {
    acquire(address) {
      const mine = byAddress.get(address) ?? 0;
      if (limits.total !== undefined && open >= limits.total) {
        throw new HarmonyError(limitErrors.serverBusy, { retryAfterSeconds: 5 });
      }
      if (limits.perAddress !== undefined && mine >= limits.perAddress) {
        throw new HarmonyError(limitErrors.tooManyStreams, {
          message: `too many open streams from your address (${limits.perAddress}): close one first`,
        });
      }
      byAddress.set(address, mine + 1);
      open++;
      let released = false;
      return () => {
        if (released) return;
        released = true;
        open--;
        const left = (byAddress.get(address) ?? 1) - 1;
        if (left === 0) byAddress.delete(address);
        else byAddress.set(address, left);
      };
    },
    get open() {
      return open;
    },
  };
}
