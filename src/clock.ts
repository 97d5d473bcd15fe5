/** The time source. Tests pass a fake one; nothing else calls `Date.now()` for logic. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock that only moves when told to, for tests. */
export function createFakeClock(start = Date.UTC(2026, 0, 1)): Clock & {
  advance(ms: number): void;
} {
  let current = start;
  return {
    now: () => current,
    advance(ms) {
      current += ms;
    },
  };
}
