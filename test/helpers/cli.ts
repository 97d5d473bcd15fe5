import { runCli } from "../../src/admin-cli.js";

/**
 * Runs an operator command in this process through `runCli`, the function
 * `src/cli.ts` runs, with `env` as its whole environment; resolves with its exit
 * code and output. (test/processes.test.ts and test/startup.test.ts run the
 * executable itself, which costs a process start per command.)
 */
export async function cliInProcess(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, {
    env: { LOG_LEVEL: "silent", ...env },
    stdout: (t) => {
      stdout += t;
    },
    stderr: (t) => {
      stderr += t;
    },
  });
  return { code, stdout, stderr };
}
