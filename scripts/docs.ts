/**
 * Writes the README's configuration table from the settings table
 * (src/settings.ts), between the `settings` markers. `npm run docs`;
 * test/config.test.ts fails when the README is out of step.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { replaceSettingsTable } from "../src/settings.js";

const readme = fileURLToPath(new URL("../README.md", import.meta.url));
const before = readFileSync(readme, "utf8");
const after = replaceSettingsTable(before);
if (after !== before) writeFileSync(readme, after);
process.stdout.write(after === before ? "README.md is up to date\n" : "README.md updated\n");
