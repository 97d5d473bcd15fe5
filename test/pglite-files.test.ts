import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
} from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createPgliteDatabase, DATA_DIR_MODE, DATA_FILE_MODE } from "../src/db/pglite.js";
import { createTestApp } from "./helpers/app.js";
import { newUser, register } from "./helpers/flow.js";

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

const recorder = fileURLToPath(new URL("./helpers/record-creations.cjs", import.meta.url));
const { recordCreations } = createRequire(import.meta.url)(recorder) as {
  recordCreations(root: string): {
    created: { path: string; mode: number }[];
    restore(): void;
  };
};

/**
 * Records creations under `root` in this process and in the child processes
 * it starts meanwhile (cadenza runs initdb in one), through NODE_OPTIONS.
 */
function recordEverywhere(root: string) {
  const here = recordCreations(root);
  const log = join(mkdtempSync(join(tmpdir(), "cadenza-creations-")), "created.jsonl");
  const saved = {
    NODE_OPTIONS: process.env.NODE_OPTIONS,
    wanted: process.env.CADENZA_RECORD_CREATIONS,
  };
  process.env.NODE_OPTIONS = `${saved.NODE_OPTIONS ?? ""} --require ${recorder}`.trim();
  process.env.CADENZA_RECORD_CREATIONS = `${root}\n${log}`;
  return {
    /** Every creation so far, in this process and in children. */
    created(): { path: string; mode: number }[] {
      const children = existsSync(log)
        ? readFileSync(log, "utf8")
            .split("\n")
            .filter(Boolean)
            .map((l) => JSON.parse(l) as { path: string; mode: number })
        : [];
      return [...children, ...here.created];
    },
    restore() {
      here.restore();
      for (const [name, value] of [
        ["NODE_OPTIONS", saved.NODE_OPTIONS],
        ["CADENZA_RECORD_CREATIONS", saved.wanted],
      ] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
      rmSync(dirname(log), { recursive: true, force: true });
    },
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
    const recording = recordEverywhere(root);
    try {
      let db = await createPgliteDatabase(root);
      let app = await createTestApp(db);
      await register(app.client, newUser());
      await app.close();
      await db.close();
      expect(readableByOthers(entries(root), root)).toEqual([]);
      // The recording saw every file and folder made so far, initdb's in its
      // child process included: the folder itself aside (cadenza makes it
      // 0700), and pg_internal.init, which Postgres writes under a temporary
      // name (recorded) and renames into place.
      const seen = new Set(recording.created().map((c) => c.path));
      expect(
        entries(root)
          .filter((e) => e.path !== root && basename(e.path) !== "pg_internal.init")
          .filter((e) => !seen.has(e.path))
          .map((e) => relative(root, e.path)),
      ).toEqual([]);

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
      const created = recording.created();
      expect(
        created.filter((c) => (c.mode & 0o077) !== 0).map((c) => relative(root, c.path)),
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
    // As an older cadenza left it under umask 000: its folders 0777 and
    // initdb's files 0666; the few Postgres made 0600 itself are opened up
    // too, so that every entry is one the open must fix.
    const all = entries(root);
    for (const e of all) chmodSync(e.path, e.kind === "dir" ? 0o777 : 0o666);
    expect(readableByOthers(entries(root), root)).toHaveLength(all.length);

    const db = await createPgliteDatabase(root);
    expect(readableByOthers(entries(root), root)).toEqual([]);
    expect((await db.query<{ x: number }>("SELECT x FROM t")).rows).toEqual([{ x: 1 }]);
    await db.close();
  });
});
