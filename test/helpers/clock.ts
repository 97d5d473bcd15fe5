import type { Clock } from "../../src/clock.js";

/** A clock that only moves when told to. */
export type FakeClock = Clock & { advance(ms: number): void };

export function createFakeClock(start = Date.UTC(2026, 0, 1)): FakeClock {
  let current = start;
  return {
    now: () => current,
    advance(ms) {
      current += ms;
    },
  };
}
