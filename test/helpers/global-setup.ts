import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { transformWithOxc } from "vite";
import type { TestProject } from "vitest/node";
import { migrate } from "../../src/db/migrate.js";
import { createPgliteDatabase, inMemory } from "../../src/db/pglite.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A tarball of a migrated in-memory PGlite, which `pglite.open()` starts each database from. */
    pgliteTemplate: string;
    /** A copy of the repository's src/ as JavaScript, which spawned servers and CLIs run. */
    serverBuild: string;
  }
}

const root = fileURLToPath(new URL("../../", import.meta.url));

/**
 * One migrated PGlite, dumped to `file`. Every test database then starts from
 * it (~0.5 s) rather than from an initdb and the migrations (~2-3 s each on
 * these two-core machines).
 */
async function dumpMigratedPglite(file: string): Promise<void> {
  const db = await createPgliteDatabase(inMemory);
  try {
    await migrate(db);
    writeFileSync(file, Buffer.from(await (await db.dumpDataDir()).arrayBuffer()));
  } finally {
    await db.close();
  }
}

/**
 * src/ with its types stripped (as tsx and tsc do; Vite's Oxc, ~20 ms for all
 * of it) into `out/src`, its other files copied, beside links to the
 * repository's package.json, node_modules and dist: paths relative to a
 * module (`./migrations/`, `../../dist/web/`) and package imports resolve as
 * they do from src/ or dist/. A spawned `node out/src/main.js` starts as
 * `npm start` does, from JavaScript, without tsx's ~0.5 s of loading per
 * process.
 */
async function buildSrc(out: string): Promise<void> {
  const files = readdirSync(join(root, "src"), { recursive: true, withFileTypes: true }).filter(
    (e) => e.isFile(),
  );
  await Promise.all(
    files.map(async (e) => {
      const from = join(e.parentPath, e.name);
      const to = join(out, relative(root, from));
      mkdirSync(dirname(to), { recursive: true });
      if (!from.endsWith(".ts")) return copyFileSync(from, to);
      const { code } = await transformWithOxc(await readFile(from, "utf8"), from, {
        lang: "ts",
        target: "es2023",
      });
      writeFileSync(to.replace(/\.ts$/, ".js"), code);
    }),
  );
  for (const name of ["package.json", "node_modules", "dist"]) {
    symlinkSync(join(root, name), join(out, name));
  }
}

/** Once per run, before any test file: the template database and the build, in a folder removed after. */
export default async function setup(project: TestProject) {
  const dir = mkdtempSync(join(tmpdir(), "cadenza-test-run-"));
  const template = join(dir, "pglite.tar");
  const build = join(dir, "build");
  await Promise.all([dumpMigratedPglite(template), buildSrc(build)]);
  project.provide("pgliteTemplate", template);
  project.provide("serverBuild", build);
  return () => rmSync(dir, { recursive: true, force: true });
}
