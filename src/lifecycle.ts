import type { Logger } from "pino";

/** Periodic work the context runs in the background, such as deleting expired rows. */
export interface Job {
  readonly name: string;
  readonly everyMs: number;
  /** Returns how many things it did (rows deleted), for the debug log. */
  run(): Promise<number>;
}

/**
 * The one list of what an AppContext runs in the background and what it must
 * close, so nothing is forgotten: each module registers its jobs and closer
 * where it is wired, and `close` undoes everything in reverse order.
 */
export interface Lifecycle {
  job(job: Job): void;
  onClose(name: string, close: () => Promise<void>): void;
  /** The registered jobs, in order. */
  readonly jobs: readonly Job[];
  /** Starts every job's timer (not started by tests, which run jobs by hand). */
  start(): void;
  /** Runs every job once now; resolves with what each did, by name. */
  runJobs(): Promise<Record<string, number>>;
  /** Stops the timers and runs the closers, last registered first. */
  close(): Promise<void>;
}

export function createLifecycle(logger: Logger): Lifecycle {
  const jobs: Job[] = [];
  const closers: { name: string; close: () => Promise<void> }[] = [];
  const timers: NodeJS.Timeout[] = [];

  const runJob = async (job: Job): Promise<number> => {
    const count = await job.run();
    if (count > 0) logger.debug({ job: job.name, count }, "background job done");
    return count;
  };

  return {
    jobs,
    job(job) {
      jobs.push(job);
    },
    onClose(name, close) {
      closers.push({ name, close });
    },
    start() {
      for (const job of jobs) {
        const timer = setInterval(() => {
          runJob(job).catch((err: unknown) =>
            logger.warn({ err, job: job.name }, "background job failed"),
          );
        }, job.everyMs);
        timers.push(timer.unref());
      }
    },
    async runJobs() {
      const done: Record<string, number> = {};
      for (const job of jobs) done[job.name] = await runJob(job);
      return done;
    },
    async close() {
      for (const timer of timers.splice(0)) clearInterval(timer);
      const errors: unknown[] = [];
      for (const { name, close } of closers.splice(0).reverse()) {
        try {
          await close();
        } catch (err) {
          logger.warn({ err, closing: name }, "closing failed");
          errors.push(err);
        }
      }
      if (errors.length > 0) throw errors[0];
    },
  };
}
