/** The time source. Tests pass a fake one; nothing else calls `Date.now()` for logic. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };
