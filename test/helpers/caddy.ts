import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The reverse-proxy configuration the repository ships, and docker-compose.yml mounts. */
export const caddyfile = fileURLToPath(new URL("../../deploy/Caddyfile", import.meta.url));

/** `caddy version`'s answer when a caddy binary is on PATH, else undefined. */
export function caddyVersion(): string | undefined {
  const run = spawnSync("caddy", ["version"], { encoding: "utf8" });
  return run.status === 0 ? run.stdout.trim() : undefined;
}

/** What the Caddyfile's placeholders are set to: only addresses and ports. */
export interface CaddyAddresses {
  /** `host:port` of cadenza. */
  readonly cadenza: string;
  /** `host:port` of the chat server. */
  readonly chat: string;
  /** The port Caddy serves on (plain HTTP: HTTP/1.1 and h2c). */
  readonly port: number;
}

function environment(home: string, addresses: CaddyAddresses): NodeJS.ProcessEnv {
  return {
    ...process.env,
    // Caddy keeps its state (autosave, certificates) under these: a directory of its own.
    HOME: home,
    XDG_CONFIG_HOME: home,
    XDG_DATA_HOME: home,
    SITE_ADDRESS: `:${addresses.port}`,
    CADENZA_UPSTREAM: addresses.cadenza,
    CHAT_UPSTREAM: addresses.chat,
    // Nothing here reloads it, and a fixed admin port would collide with other runs.
    CADDY_ADMIN: "off",
  };
}

/** The JSON config Caddy makes of the Caddyfile with these addresses (`caddy adapt`). */
export function adaptCaddyfile(addresses: CaddyAddresses): unknown {
  const home = mkdtempSync(join(tmpdir(), "cadenza-caddy-"));
  try {
    const run = spawnSync(
      "caddy",
      ["adapt", "--config", caddyfile, "--adapter", "caddyfile", "--validate"],
      { encoding: "utf8", env: environment(home, addresses), timeout: 20_000 },
    );
    if (run.status !== 0) throw new Error(`caddy adapt failed:\n${run.stderr}`);
    return JSON.parse(run.stdout) as unknown;
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}

export interface CaddyProcess {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  readonly child: ChildProcess;
  /** Everything Caddy logged (JSON lines on stderr), for failure messages. */
  log(): string;
  /** SIGTERM, then SIGKILL if it has not exited within a few seconds. */
  stop(): Promise<void>;
}

/**
 * Runs `caddy run` on the repository's Caddyfile as it is (the environment fills in the
 * addresses), and resolves once Caddy answers HTTP on its port; rejects if it exits first or
 * does not answer within `readyWithinMs`.
 */
export async function startCaddy(
  addresses: CaddyAddresses,
  readyWithinMs = 15_000,
): Promise<CaddyProcess> {
  const home = mkdtempSync(join(tmpdir(), "cadenza-caddy-"));
  const child = spawn("caddy", ["run", "--config", caddyfile, "--adapter", "caddyfile"], {
    env: environment(home, addresses),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const collect = (d: Buffer) => {
    output += d.toString();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  const exited = once(child, "exit");
  const url = `http://127.0.0.1:${addresses.port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(home, { recursive: true, force: true });
  };

  const deadline = Date.now() + readyWithinMs;
  let exitCode: number | null | undefined;
  void exited.then(([code]) => {
    exitCode = code as number | null;
  });
  for (;;) {
    if (exitCode !== undefined) {
      await stop();
      throw new Error(`caddy exited with ${exitCode} before serving:\n${output}`);
    }
    // Any answer from Caddy itself means its listener and routes are in place.
    const answered = await fetch(`${url}/`, { signal: AbortSignal.timeout(1_000) }).then(
      (res) => res.headers.get("server") === "Caddy",
      () => false,
    );
    if (answered) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`caddy did not answer on ${url} within ${readyWithinMs} ms:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return { url, child, log: () => output, stop };
}
