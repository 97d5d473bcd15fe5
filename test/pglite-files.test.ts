import { lstatSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createPgliteDatabase, DATA_DIR_MODE, DATA_FILE_MODE } from "../src/db/pglite.js";
import { createTestApp } from "./helpers/app.js";
import { newUser, register } from "./helpers/flow.js";

/** The object PGlite's `require("fs")` returns, where its calls can be watched. */
const fs = createRequire(import.meta.url)("node:fs") as typeof import("node:fs");

interface Entry {
  readonly path: string;
  readonly kind: "dir" | "file";
  readonly mode: number;
}

/** `dir` and everything under it (symlinks aside), with permission bits. */
function entries(dir: string): Entry[] {
  const all: Entry[] = [{ path: dir, kind: "dir", mode: lstatSync(dir).mode & 0o777 }];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) all.push(...entries(path));
    else if (e.isFile()) all.push({ path, kind: "file", mode: lstatSync(path).mode & 0o777 });
  }
  return all;
}

/** The entries not owner-only, as `path mode` for a readable failure. */
function readableByOthers(list: readonly Entry[], root: string): string[] {
  return list
    .filter((e) => e.mode !== (e.kind === "dir" ? DATA_DIR_MODE : DATA_FILE_MODE))
    .map((e) => `${relative(root, e.path) || "."} ${e.mode.toString(8)}`);
}

/**
 * Records the mode every file and folder under `root` is created with, as the
 * kernel applies it (the mode asked for, less the umask at that moment).
 * PGlite's Emscripten NODEFS creates them with these three calls.
 */
function recordCreations(root: string) {
  const created: { path: string; mode: number }[] = [];
  const originals = {
    writeFileSync: fs.writeFileSync,
    mkdirSync: fs.mkdirSync,
    openSync: fs.openSync,
  };
  const note = (path: unknown, mode: unknown, fallback: number): void => {
    if (typeof path !== "string" || !path.startsWith(root)) return;
    const asked = typeof mode === "number" ? mode : fallback;
    created.push({ path, mode: asked & 0o777 & ~process.umask() });
  };
  const patched = fs as unknown as Record<string, (...args: unknown[]) => unknown>;
  patched.writeFileSync = (...args: unknown[]) => {
    note(args[0], (args[2] as { mode?: number } | undefined)?.mode, 0o666);
    return (originals.writeFileSync as (...a: unknown[]) => unknown)(...args);
  };
  patched.mkdirSync = (...args: unknown[]) => {
    const options = args[1];
    note(
      args[0],
      typeof options === "object" ? (options as { mode?: number })?.mode : options,
      0o777,
    );
    return (originals.mkdirSync as (...a: unknown[]) => unknown)(...args);
  };
  patched.openSync = (...args: unknown[]) => {
    if (args[2] !== undefined) note(args[0], args[2], 0o666);
    return (originals.openSync as (...a: unknown[]) => unknown)(...args);
  };
  return {
    created,
    restore: () => Object.assign(fs, originals),
  };
}

describe("PGlite's data directory on disk", () => {
  const made: string[] = [];
  /** A data directory path that does not exist yet, in a fresh folder removed afterwards. */
  const freshDataDir = (): string => {
    const parent = mkdtempSync(join(tmpdir(), "cadenza-modes-"));
    made.push(parent);
    return join(parent, "data");
  };
  let umask: number;
  beforeAll(() => {
    umask = process.umask();
  });
  // The most permissive umask there is, before each open, as an operator's shell might have.
  beforeEach(() => {
    process.umask(0o000);
  });
  afterAll(() => {
    process.umask(umask);
    for (const dir of made) rmSync(dir, { recursive: true, force: true });
  });

  it("is owner-only under umask 000: after registering, after a restart, and for every file made later, WAL included", async () => {
    const root = freshDataDir();
    const recording = recordCreations(root);
    try {
      let db = await createPgliteDatabase(root);
      let app = await createTestApp(db);
      await register(app.client, newUser());
      await app.close();
      await db.close();
      expect(readableByOthers(entries(root), root)).toEqual([]);

      process.umask(0o000);
      db = await createPgliteDatabase(root);
      const before = new Set(entries(root).map((e) => e.path));
      app = await createTestApp(db);
      await register(app.client, newUser());
      // New relation files, and a switch to a new WAL segment.
      await db.exec(
        `CREATE TABLE filler AS SELECT repeat(md5(g::text), 40) AS x FROM generate_series(1, 20000) g;
         SELECT pg_switch_wal(); CHECKPOINT;`,
      );
      const later = entries(root).filter((e) => !before.has(e.path));
      expect(later.some((e) => relative(root, e.path).startsWith("pg_wal/"))).toBe(true);
      expect(readableByOthers(later, root)).toEqual([]);
      await app.close();
      await db.close();
      expect(readableByOthers(entries(root), root)).toEqual([]);

      // Not even for the instant between a file's creation and PGlite's chmod.
      expect(recording.created.length).toBeGreaterThan(900);
      expect(
        recording.created.filter((c) => (c.mode & 0o077) !== 0).map((c) => relative(root, c.path)),
      ).toEqual([]);
    } finally {
      recording.restore();
    }
  });

  it("is made owner-only when opened, if an older version left it readable", async () => {
    const root = freshDataDir();
    const older = await PGlite.create(root);
    await older.exec("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    await older.close();
    expect(readableByOthers(entries(root), root).length).toBeGreaterThan(900);

    const db = await createPgliteDatabase(root);
    expect(readableByOthers(entries(root), root)).toEqual([]);
    expect((await db.query<{ x: number }>("SELECT x FROM t")).rows).toEqual([{ x: 1 }]);
    await db.close();
  });
});
