import type { Clock } from "../../src/clock.js";

/** A clock that only moves when told to. */
export type FakeClock = Clock & {
  advance(ms: number): void;
  /**
   * Back to the time it was made at. Files that share a clock between tests
   * reset it after each, so that no test runs at a time an earlier one left.
   */
  reset(): void;
};

export function createFakeClock(start = Date.UTC(2026, 0, 1)): FakeClock {
  let current = start;
  return {
    now: () => current,
    advance(ms) {
      current += ms;
    },
    reset() {
      current = start;
    },
  };
}
