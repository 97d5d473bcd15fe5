/**
 * Environment variables that are not cadenza settings but look like one
 * misspelt: an operator who sets `FEDERATON_ALLOW` or `DATABSE_URL` gets the
 * default silently (for the second, PGlite instead of Postgres), so cadenza
 * names them at start-up. Only near misses of cadenza's own names count; the
 * environment's other variables (PATH, NODE_*, libpq's PG*, …) are not ours
 * to judge.
 */

/** A variable that looks like the setting `meant`. */
export interface Lookalike {
  readonly name: string;
  readonly meant: string;
}

/** Upper snake case, as every setting is named. */
const settingShaped = /^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/;

/** Common variables that may sit near a setting's name and are someone else's. */
const others = new Set([
  "HOME",
  "HOSTNAME",
  "HOSTTYPE",
  "PATH",
  "PWD",
  "OLDPWD",
  "SHELL",
  "SHLVL",
  "TERM",
  "USER",
  "LOGNAME",
  "LANG",
  "LANGUAGE",
  "MAIL",
  "TZ",
  "TMPDIR",
  "DEBUG",
  "CI",
]);
const otherPrefixes = [
  "NODE_",
  "NPM_",
  "PG",
  "LC_",
  "XDG_",
  "SSH_",
  "UV_",
  "VITEST",
  "KUBERNETES_",
];

/** The longest edit distance that still counts as a misspelling of `name`. */
const tolerance = (name: string): number => (name.length <= 5 ? 1 : 2);

/**
 * The variables in `present` that look like one of `settings`: within a small
 * Damerau-Levenshtein distance (1 for names of up to five letters, 2 beyond),
 * or a setting with `CADENZA_` in front or `_FILE` behind (Docker's secrets
 * convention, which cadenza does not follow). `CADENZA_` is matched only
 * before names of several words: Kubernetes sets `CADENZA_PORT` and
 * `CADENZA_SERVICE_HOST` for a service named cadenza.
 */
export function settingLookalikes(
  present: Iterable<string>,
  settings: readonly string[],
): Lookalike[] {
  const known = new Set(settings);
  const found: Lookalike[] = [];
  for (const name of present) {
    if (known.has(name) || !settingShaped.test(name) || others.has(name)) continue;
    if (otherPrefixes.some((p) => name.startsWith(p))) continue;
    const meant = affixed(name, known) ?? nearest(name, settings);
    if (meant !== undefined) found.push({ name, meant });
  }
  return found;
}

function affixed(name: string, known: ReadonlySet<string>): string | undefined {
  const unprefixed = name.startsWith("CADENZA_") ? name.slice("CADENZA_".length) : "";
  if (unprefixed.includes("_") && known.has(unprefixed)) return unprefixed;
  const unsuffixed = name.endsWith("_FILE") ? name.slice(0, -"_FILE".length) : "";
  return known.has(unsuffixed) ? unsuffixed : undefined;
}

function nearest(name: string, settings: readonly string[]): string | undefined {
  let best: { meant: string; distance: number } | undefined;
  for (const setting of settings) {
    if (Math.abs(setting.length - name.length) > tolerance(setting)) continue;
    const distance = editDistance(name, setting);
    if (distance <= tolerance(setting) && (best === undefined || distance < best.distance)) {
      best = { meant: setting, distance };
    }
  }
  return best?.meant;
}

/**
 * Damerau-Levenshtein distance (the optimal string alignment variant): the
 * fewest insertions, deletions, substitutions and swaps of two adjacent
 * characters that turn `a` into `b`.
 */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array(rows * cols).fill(0);
  const at = (i: number, j: number): number => d[i * cols + j] ?? 0;
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, at(i - 2, j - 2) + 1);
      }
      d[i * cols + j] = best;
    }
  }
  return at(a.length, b.length);
}
