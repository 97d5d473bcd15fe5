import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  acquireDataDirLock,
  checkDataDir,
  judgeLock,
  LOCK_FILE,
  type LockHolder,
  type ProcessProbe,
  parseHolder,
  STALE_AFTER_MS,
  thisProcess,
} from "../src/db/data-dir-lock.js";

const self: LockHolder = {
  pid: 1,
  hostname: "cadenza-a",
  since: "2025-01-01T00:00:00.000Z",
  bootId: "boot-1",
  pidNamespace: "pid:[100]",
  processStart: "500",
};
const probe = (running: Record<number, string>): ProcessProbe => ({
  isRunning: (pid) => pid in running,
  startOf: (pid) => running[pid],
});

describe("whether a lock's holder is still there", () => {
  const here = { ...self, pid: 42, processStart: "900" };
  it.each<[string, LockHolder | undefined, number, Record<number, string>, boolean | RegExp]>([
    ["a running holder in this PID namespace", here, 0, { 42: "900" }, true],
    ["a holder that has exited", here, 0, {}, /process 42 is no longer running/],
    [
      "a PID reused by a later process",
      here,
      0,
      { 42: "901" },
      /PID 42 now belongs to another process/,
    ],
    [
      "a holder with our own PID (a restarted container)",
      { ...here, pid: 1 },
      0,
      {},
      /is now this process's own/,
    ],
    [
      "another PID namespace, refreshed just now",
      { ...here, pidNamespace: "pid:[200]" },
      1_000,
      {},
      true,
    ],
    [
      "another PID namespace with our PID, refreshed just now (docker compose run)",
      { ...self, pidNamespace: "pid:[200]" },
      1_000,
      {},
      true,
    ],
    [
      "another PID namespace, not refreshed",
      { ...here, pidNamespace: "pid:[200]" },
      STALE_AFTER_MS + 1,
      {},
      /in another container or on another host, has not refreshed it for 30 s/,
    ],
    [
      "another boot of the kernel",
      { ...here, bootId: "boot-0" },
      STALE_AFTER_MS + 1,
      { 42: "900" },
      /has not refreshed it/,
    ],
    ["a file not yet written", undefined, 10, {}, true],
    [
      "a file no one finished writing",
      undefined,
      STALE_AFTER_MS + 1,
      {},
      /unreadable and 30 s old/,
    ],
  ])("%s", (_, holder, ageMs, running, expected) => {
    const verdict = judgeLock(holder, self, ageMs, probe(running));
    if (expected === true) expect(verdict).toEqual({ held: true });
    else
      expect(verdict).toMatchObject({
        held: false,
        reason: expect.stringMatching(expected as RegExp),
      });
  });

  it("compares host names where there is no /proc to tell namespaces", () => {
    const bare = { pid: 1, hostname: "mac", since: self.since };
    expect(judgeLock({ ...bare, pid: 7 }, bare, 0, probe({ 7: "" }))).toEqual({ held: true });
    expect(judgeLock({ ...bare, pid: 7 }, bare, 0, probe({}))).toMatchObject({ held: false });
    expect(judgeLock({ ...bare, hostname: "other" }, bare, 0, probe({}))).toEqual({ held: true });
  });

  it("describes this process as the lock records it, and reads it back", () => {
    const me = thisProcess();
    expect(me.pid).toBe(process.pid);
    if (existsSync("/proc/self/stat")) expect(me.processStart).toMatch(/^\d+$/);
    expect(parseHolder(JSON.stringify({ program: "cadenza", ...me }))).toEqual(me);
    expect(parseHolder('{"pid":1')).toBeUndefined();
    expect(parseHolder('{"pid":"1","hostname":"h","since":"s"}')).toBeUndefined();
  });
});

describe("the lock file", () => {
  const dirs: string[] = [];
  const dataDir = () => {
    const dir = mkdtempSync(join(tmpdir(), "cadenza-lock-"));
    dirs.push(dir);
    return dir;
  };
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  const warnings: unknown[][] = [];
  const logger = { warn: (...a: unknown[]) => warnings.push(a), error: () => {} };

  it("names this process while held, is gone once released, and is refused a second time here", async () => {
    const dir = dataDir();
    const lock = await acquireDataDirLock(dir);
    const holder = parseHolder(readFileSync(join(dir, LOCK_FILE), "utf8"));
    expect(holder?.pid).toBe(process.pid);
    await expect(acquireDataDirLock(dir)).rejects.toThrow(/is already open in this process/);
    await lock.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    await (await acquireDataDirLock(dir)).release();
  });

  it("refuses a live holder, naming its PID, host and start", async () => {
    const dir = dataDir();
    const other = { ...thisProcess(), pid: 4242, hostname: "cadenza-b" };
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify(other));
    const alive = probe({ 4242: other.processStart ?? "" });
    const expected = `DATA_DIR=${dir} is in use by cadenza process 4242 on host cadenza-b since ${other.since}`;
    await expect(acquireDataDirLock(dir, { probe: alive })).rejects.toThrow(expected);
    expect((await checkDataDir(dir, { probe: alive }))?.message).toContain(expected);
    expect(readFileSync(join(dir, LOCK_FILE), "utf8")).toBe(JSON.stringify(other));
  });

  it("takes over a lock whose holder has gone, saying so", async () => {
    const dir = dataDir();
    const gone = { ...thisProcess(), pid: 4243 };
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify(gone));
    expect(await checkDataDir(dir, { probe: probe({}) })).toBeUndefined();
    const lock = await acquireDataDirLock(dir, { probe: probe({}), logger });
    expect(parseHolder(readFileSync(join(dir, LOCK_FILE), "utf8"))?.pid).toBe(process.pid);
    expect(String(warnings.at(-1)?.[1])).toMatch(
      /took over the lock left by cadenza process 4243 .*: process 4243 is no longer running/,
    );
    await lock.release();
  });

  it("takes over an unreadable lock file only once it is old", async () => {
    const dir = dataDir();
    const file = join(dir, LOCK_FILE);
    writeFileSync(file, "");
    await expect(acquireDataDirLock(dir)).rejects.toThrow(/in use by an unknown process/);
    const old = new Date(Date.now() - STALE_AFTER_MS - 5_000);
    utimesSync(file, old, old);
    const lock = await acquireDataDirLock(dir, { logger });
    expect(parseHolder(readFileSync(file, "utf8"))?.pid).toBe(process.pid);
    await lock.release();
  });

  it("reports a DATA_DIR that is a file", async () => {
    const file = join(dataDir(), "a-file");
    writeFileSync(file, "");
    expect((await checkDataDir(file))?.message).toMatch(/^DATA_DIR=.*a-file is not a directory/);
    expect((await checkDataDir(join(file, "below")))?.message).toMatch(/is not a directory/);
  });
});
