import { inspect } from "node:util";
import { type Config, ConfigError } from "./config.js";
import { cutSecrets, databaseUrlSecrets } from "./database-url.js";
import { StartupError } from "./errors.js";

/** What main and the CLI print when they cannot start, and the exit code. */
export interface StartupFailureReport {
  /** One line per problem, each ending in a newline; a stack after them only when asked for. */
  readonly text: string;
  readonly exitCode: 1 | 2;
}

export interface ReportOptions {
  /** What each line starts with, such as `cadenza: cannot start: `. */
  readonly prefix: string;
  /** Print an unexpected error's stack after its line (LOG_LEVEL=debug or trace). */
  readonly showStack: boolean;
  /** Text never printed (the database password). */
  readonly secrets: readonly string[];
}

/**
 * Turns whatever stopped start-up into lines an operator can act on: each
 * known problem ({@link ConfigError}'s, a {@link StartupError}, several in an
 * AggregateError) is one line naming the setting, exit code 2 when any of
 * them needs a change and 1 when all may pass by themselves. Anything else
 * is a bug or an unforeseen condition: one line with its type and message,
 * exit code 1, and its stack only when asked for.
 */
export function describeStartupFailure(err: unknown, options: ReportOptions): StartupFailureReport {
  const known = knownProblems(err);
  const line = (text: string) => `${options.prefix}${cutSecrets(oneLine(text), options.secrets)}\n`;
  if (known !== undefined) {
    return {
      text: known.map((p) => line(p.message)).join(""),
      exitCode: known.some((p) => p.exitCode === 2) ? 2 : 1,
    };
  }
  const stack =
    options.showStack && err instanceof Error && err.stack !== undefined
      ? `${cutSecrets(err.stack, options.secrets)}\n`
      : "";
  const hint = options.showStack ? "" : " (LOG_LEVEL=debug prints its stack)";
  return { text: `${line(`unexpected error: ${describe(err)}${hint}`)}${stack}`, exitCode: 1 };
}

/**
 * {@link describeStartupFailure} with the options `config` implies, as far as
 * it was read before the failure: stacks at LOG_LEVEL=debug or trace, and
 * DATABASE_URL's password never printed.
 */
export function startupFailureReport(
  err: unknown,
  prefix: string,
  config: Pick<Config, "logLevel" | "databaseUrl"> | undefined,
): StartupFailureReport {
  return describeStartupFailure(err, {
    prefix,
    showStack: config?.logLevel === "debug" || config?.logLevel === "trace",
    secrets: config?.databaseUrl === undefined ? [] : databaseUrlSecrets(config.databaseUrl),
  });
}

function knownProblems(
  err: unknown,
): { readonly message: string; readonly exitCode: 1 | 2 }[] | undefined {
  if (err instanceof ConfigError) return err.problems.map((message) => ({ message, exitCode: 2 }));
  if (err instanceof StartupError) return [err];
  if (err instanceof AggregateError && err.errors.length > 0) {
    const all = err.errors.map(knownProblems);
    if (all.every((p) => p !== undefined)) return all.flat();
  }
  return undefined;
}

/** A thrown value as text: an Error's type, message and code; anything else inspected, never `[object Object]`. */
function describe(value: unknown): string {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return `${value.name}: ${value.message}${typeof code === "string" ? ` (${code})` : ""}`;
  }
  if (typeof value === "string") return value;
  return inspect(value, { depth: 2, breakLength: Number.POSITIVE_INFINITY });
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, " ").trim();
}
