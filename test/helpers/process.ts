import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { inject } from "vitest";

const root = fileURLToPath(new URL("../../", import.meta.url));

/**
 * The command line that runs `src/<name>.ts` as its own process: node on this
 * run's JavaScript copy of src/ (test/helpers/global-setup.ts), as `npm start`
 * runs dist/, from the repository's folder.
 */
export function entryPoint(name: "main" | "cli"): readonly [string, string] {
  return [process.execPath, join(inject("serverBuild"), "src", `${name}.js`)];
}

export interface ServerProcess {
  readonly url: string;
  /** The internal port's URL (HomeserverService, AdminService, /metrics). */
  readonly internalUrl: string;
  readonly child: ChildProcess;
  /** Every log line the process printed, parsed. */
  readonly logs: Record<string, unknown>[];
  /** Sends SIGTERM and resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** Both listeners on any free loopback port, so servers started together never collide. */
const quiet = {
  HOST: "127.0.0.1",
  PORT: "0",
  INTERNAL_PORT: "0",
  SHUTDOWN_DRAIN: "0s",
  LOG_LEVEL: "info",
};

/**
 * Runs `src/main.ts` as its own process, the way `npm start` does (see
 * {@link entryPoint}), and resolves once it logs the address it listens on.
 */
export async function startServerProcess(env: Record<string, string>): Promise<ServerProcess> {
  const [node, main] = entryPoint("main");
  const child = spawn(node, [main], {
    cwd: root,
    env: { ...process.env, ...quiet, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const { url, internalUrl } = await new Promise<{ url: string; internalUrl: string }>(
    (resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start:\n${stderr}`)), 30_000);
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited with ${code} before listening:\n${stderr}`));
      });
      if (!child.stdout) throw new Error("no stdout");
      createInterface({ input: child.stdout }).on("line", (line) => {
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          logs.push(entry);
          if (typeof entry.url === "string" && String(entry.msg).startsWith("cadenza listening")) {
            clearTimeout(timer);
            resolve({ url: entry.url, internalUrl: String(entry.internalUrl) });
          }
        } catch {
          // not a log line
        }
      });
    },
  );
  return {
    url,
    internalUrl,
    child,
    logs,
    async stop() {
      // Already exited (or killed by a signal, which leaves exitCode null).
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      const exited = once(child, "exit");
      child.kill("SIGTERM");
      const [code] = (await exited) as [number | null];
      return code;
    },
  };
}

/** Runs `npm run cli -- <args>` (src/cli.ts) to completion; resolves with its exit code and output. */
export async function runCli(
  args: readonly string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [node, cli] = entryPoint("cli");
  const child = spawn(node, [cli, ...args], {
    cwd: root,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const [code] = (await once(child, "close")) as [number | null];
  return { code, stdout, stderr };
}

/**
 * Runs `src/main.ts` to completion, for start-ups that must fail: resolves
 * with its exit code and output. A process still running after `timeoutMs`
 * (it started instead of failing) is killed and the promise rejects.
 */
export async function runServerToExit(
  env: Record<string, string>,
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [node, main] = entryPoint("main");
  const child = spawn(node, [main], {
    cwd: root,
    env: { ...process.env, ...quiet, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  // "close", not "exit": the output may still be arriving when the process exits.
  const [code, signal] = (await once(child, "close")) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  if (signal === "SIGKILL") {
    throw new Error(`src/main.ts was still running after ${timeoutMs} ms:\n${stdout}${stderr}`);
  }
  return { code, stdout, stderr };
}
