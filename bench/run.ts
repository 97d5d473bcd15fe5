/**
 * `npm run bench [-- --smoke] [-- --rows 5]`: starts real cadenza processes (the built
 * `dist/main.js`) on Postgres and on PGlite, drives them from separate load
 * processes over loopback, and prints every row of BENCHMARKS.md as a ratio to
 * a ceiling measured in the same run. `--smoke` runs each row briefly at small
 * sizes, to prove the harness works (CI). `--rows 1,3` runs only those rows,
 * `--backends pglite` only that database.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { choice, registerForm } from "./forms.js";
import type { Protocol, Result, Task } from "./load.js";
import { type StreamRow, streamRows } from "./stream-rows.js";

const root = fileURLToPath(new URL("../", import.meta.url));
const smoke = process.argv.includes("--smoke");
/** The value after `--name` on the command line, split at commas. */
function listArg(name: string): Set<string> | undefined {
  const at = process.argv.indexOf(name);
  const value = at === -1 ? undefined : process.argv[at + 1];
  return value === undefined ? undefined : new Set(value.split(","));
}
/** `--rows 1,3`: only those rows (all by default). */
const onlyRows = listArg("--rows");
const wants = (row: string) => onlyRows === undefined || onlyRows.has(row);
const size = smoke
  ? { durationMs: 300, bigTable: 2_000, streams: 50, samples: 10, tokens: 30, users: 2 }
  : {
      durationMs: 10_000,
      bigTable: 1_000_000,
      streams: 10_000,
      samples: 300,
      tokens: 2000,
      users: 32,
    };
const adminUrl =
  process.env.BENCH_DATABASE_URL?.trim() || "postgres://postgres@127.0.0.1:5432/postgres";
const argon2 = { memoryKib: 19456, iterations: 2, parallelism: 1 };

type Backend = "postgres" | "pglite";

interface Server {
  url: string;
  /** The internal port's base URL (HomeserverService). */
  internalUrl: string;
  id: string;
  pid: number;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** The per-address limits (issue 9), off for the load rows. */
const perAddressLimitsOff: Record<string, string> = {
  LIMIT_BEGIN_AUTH: "off",
  LIMIT_FORMS: "off",
  LIMIT_REGISTRATIONS: "off",
  LIMIT_LOGIN_FEDERATED: "off",
  LIMIT_FEDERATE: "off",
  LIMIT_LIVE_FLOWS: "off",
  LIMIT_STREAMS_PER_ADDRESS: "off",
  LIMIT_EMAILS_PER_ADDRESS: "off",
};

/** Starts `node dist/main.js`; resolves when /readyz answers 200, with the time that took. */
async function startServer(env: Record<string, string>): Promise<Server & { readyMs: number }> {
  const started = performance.now();
  // BENCH_SERVER_NODE_ARGS: flags for the servers' node, such as `--cpu-prof --cpu-prof-dir=prof`.
  const nodeArgs = process.env.BENCH_SERVER_NODE_ARGS?.split(" ").filter(Boolean) ?? [];
  const child = spawn(process.execPath, [...nodeArgs, "dist/main.js"], {
    cwd: root,
    env: {
      ...process.env,
      HOST: "127.0.0.1",
      // Two servers run at once, and each checks its ports at start-up.
      INTERNAL_PORT: "0",
      LOG_LEVEL: "info",
      // The stream rows hold 10,000 streams from one address, over HTTP/2 on one connection.
      MAX_CONNECTIONS: "50000",
      MAX_CONNECTIONS_PER_ADDRESS: "0",
      HTTP2_MAX_CONCURRENT_STREAMS: "20000",
      // Every load generator is one client address doing a whole server's traffic: the
      // per-address limits would measure refusals, not work.
      ...perAddressLimitsOff,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const { url, internalUrl } = await new Promise<{ url: string; internalUrl: string }>(
    (resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 60_000);
      child.once("exit", (code) => reject(new Error(`server exited with ${code}: ${stderr}`)));
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
        try {
          const entry = JSON.parse(line) as { url?: string; internalUrl?: string; msg?: string };
          if (entry.url && entry.internalUrl && entry.msg?.startsWith("cadenza listening")) {
            clearTimeout(timer);
            resolve({ url: entry.url, internalUrl: entry.internalUrl });
          }
        } catch {
          // not a log line
        }
      });
    },
  );
  for (;;) {
    const res = await fetch(`${url}/readyz`).catch(() => undefined);
    if (res?.status === 200) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const readyMs = performance.now() - started;
  return {
    url,
    internalUrl,
    id: env.SERVER_ID ?? "",
    pid: child.pid ?? 0,
    child,
    readyMs,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Runs one task in its own process (bench/load.ts). */
function load(task: Task): Promise<Result> {
  // Through a file: a task can carry thousands of tokens, more than argv holds.
  const file = join(mkdtempSync(join(tmpdir(), "cadenza-task-")), "task.json");
  writeFileSync(file, JSON.stringify(task));
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "bench/load.ts", file],
      { cwd: root, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, UV_THREADPOOL_SIZE: "4" } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${task.kind}: ${stderr || err.message}`));
        else resolve(JSON.parse(stdout.trim().split("\n").at(-1) ?? "{}") as Result);
      },
    );
  });
}

async function freePort(): Promise<number> {
  const { createServer } = await import("node:net");
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address() as { port: number };
  await new Promise((r) => s.close(r));
  return port;
}

/** A fresh database for one server: a Postgres database, or a PGlite data directory. */
async function freshDatabase(
  backend: Backend,
): Promise<{ env: Record<string, string>; url?: string; drop(): Promise<void> }> {
  if (backend === "pglite") {
    const dir = mkdtempSync(join(tmpdir(), "cadenza-bench-"));
    return {
      env: { DATA_DIR: dir },
      drop: async () => rmSync(dir, { recursive: true, force: true }),
    };
  }
  const name = `cadenza_bench_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    env: { DATABASE_URL: url.toString(), DATABASE_POOL_SIZE: "16" },
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

function client(url: string) {
  return createClient(AuthService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
}

async function registerUser(url: string, n: number) {
  const c = client(url);
  const tag = `${n}-${randomBytes(3).toString("hex")}`;
  const email = `bench-${tag}@bench.example.org`;
  const password = `bench password ${tag}`;
  const { authId } = await c.beginAuth({});
  await c.nextStep({ authId, step: choice("register") });
  const res = await c.nextStep({ authId, step: registerForm(email, `bench-${tag}`, password) });
  if (res.step?.step.case !== "session") throw new Error("registration failed");
  return {
    email,
    password,
    token: res.step.step.value.sessionToken,
    userId: res.step.step.value.userId,
  };
}

interface Row {
  row: string;
  backend: Backend;
  what: string;
  measured: string;
  ceiling: string;
  ratio: number | undefined;
  goal: string;
  ok: boolean;
}
const rows: Row[] = [];
/** The result with the median throughput. */
function median(results: Result[]): Result {
  const sorted = [...results].sort((x, y) => x.perSecond - y.perSecond);
  return sorted[Math.floor(sorted.length / 2)] as Result;
}
/** Throughput and latency, and the failed calls when there were any (a row with them is missed). */
const fmt = (r: Result) =>
  `${r.perSecond.toFixed(0)}/s, p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms${r.errors ? `, ${r.errors} errors` : ""}`;
function record(row: Omit<Row, "ok">, ok: boolean) {
  rows.push({ ...row, ok });
  process.stderr.write(
    `  ${row.row} ${row.backend} ${row.what}: ${row.measured} | ${row.ceiling} | ${row.ratio?.toFixed(2) ?? "-"} ${ok ? "ok" : "MISSED"}\n`,
  );
}

/** A process's resident memory, from /proc/<pid>/status. */
function serverRssMb(pid: number): number {
  const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return Number(kb) / 1024;
}

/** CPU time (user + system, every thread) a process has used, from /proc/<pid>/stat. */
function serverCpuMs(pid: number): number {
  // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}
/** `getconf CLK_TCK`: 100 on Linux for every architecture Node supports. */
const CLOCK_TICKS_PER_SECOND = 100;

/**
 * The server's CPU per operation against argon2id's own CPU for one, as
 * measured in the raw-argon2 load process: what a login or registration costs
 * beyond the hash (three RPCs, their SQL, the flow).
 */
function cpuRow(row: string, what: string, serverMs: number, op: string, raw: Result) {
  const argonMs = raw.extra?.cpuMsPerOp ?? Number.NaN;
  const ratio = serverMs / argonMs;
  // On PGlite the database runs in the server's process, so its CPU counts too: no goal there.
  const postgres = currentBackend === "postgres";
  record(
    {
      row: `${row}b`,
      backend: currentBackend,
      what: `server CPU per ${what}`,
      measured: `${serverMs.toFixed(1)} ms`,
      ceiling: `argon2id ${op}: ${argonMs.toFixed(1)} ms CPU`,
      ratio,
      goal: postgres ? "≤ 1.15" : "— (SQL in-process)",
    },
    !postgres || ratio <= 1.15,
  );
}
let currentBackend: Backend = "postgres";

async function benchBackend(backend: Backend): Promise<void> {
  currentBackend = backend;
  process.stderr.write(`\n${backend}\n`);
  const dbB = await freshDatabase(backend);
  const dbA = await freshDatabase(backend);
  const portB = await freePort();
  const envB = {
    ...dbB.env,
    PORT: String(portB),
    SERVER_ID: `127.0.0.1:${portB}`,
    FEDERATION_ALLOW_INSECURE: "true",
  };
  let b = await startServer(envB);
  const servers: Server[] = [b];
  try {
    const user = await registerUser(b.url, 0);

    // Row 1: CheckLoggedIn against Key, on the same stack. Three alternating
    // rounds each, medians compared: the machine is shared and noisy.
    const codecs: Protocol[] = ["connect-h1", "connect-json-h1", "grpc-web-h1", "grpc-h2"];
    for (const protocol of wants("1") ? codecs : []) {
      const common = {
        kind: "unary",
        url: b.url,
        protocol,
        concurrency: 64,
        durationMs: Math.ceil(size.durationMs / 2),
      } as const;
      const keys: Result[] = [];
      const checks: Result[] = [];
      for (let round = 0; round < 3; round++) {
        keys.push(await load({ ...common, method: "key" }));
        checks.push(await load({ ...common, method: "checkLoggedIn", token: user.token }));
      }
      const key = median(keys);
      const check = median(checks);
      const ratio = check.perSecond / key.perSecond;
      record(
        {
          row: "1",
          backend,
          what: `CheckLoggedIn, ${protocol}, 64 clients (median of 3)`,
          measured: fmt(check),
          ceiling: `Key: ${fmt(key)}`,
          ratio,
          goal: "≥ 0.9",
        },
        ratio >= 0.9 && check.errors === 0 && key.errors === 0,
      );
    }

    // Row 2: the session check as the sessions table grows (Postgres: rows seeded in SQL).
    if (wants("2") && backend === "postgres" && dbB.url) {
      const db = new pg.Client({ connectionString: dbB.url });
      await db.connect();
      const seed = async (total: number) => {
        const counted = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM sessions");
        const n = Number(counted.rows[0]?.n ?? 0);
        if (total > n) {
          await db.query(
            `INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at)
             SELECT sha256(convert_to('seed-' || i, 'UTF8')), $1, now(), now(), now() + interval '1 day'
               FROM generate_series($2::int, $3::int) AS i`,
            [user.userId, n, total - 1],
          );
          await db.query("ANALYZE sessions");
        }
      };
      const common = {
        kind: "unary",
        url: b.url,
        protocol: "connect-h1",
        concurrency: 64,
        durationMs: size.durationMs,
        method: "checkLoggedIn",
        token: user.token,
      } as const;
      await seed(1000);
      const small = await load(common);
      await seed(size.bigTable);
      const big = await load(common);
      await db.end();
      const ratio = big.perSecond / small.perSecond;
      record(
        {
          row: "2",
          backend,
          what: `CheckLoggedIn with ${size.bigTable.toLocaleString("en")} sessions`,
          measured: fmt(big),
          ceiling: `1,000 sessions: ${fmt(small)}`,
          ratio,
          goal: "≥ 0.9",
        },
        ratio >= 0.9 && big.errors === 0 && small.errors === 0,
      );
    }

    // Rows 3 and 4: password logins and registrations against raw argon2id.
    if (wants("3") || wants("4")) {
      const users = [];
      for (let i = 1; i <= size.users; i++) {
        const { email, password } = await registerUser(b.url, i);
        users.push({ email, password });
      }
      const rawVerify = await load({
        kind: "raw-argon2",
        op: "verify",
        ...argon2,
        concurrency: 8,
        durationMs: size.durationMs,
      });
      const loginCpu = serverCpuMs(b.pid);
      const logins = await load({
        kind: "logins",
        url: b.url,
        users,
        concurrency: 8,
        durationMs: size.durationMs,
      });
      const loginCpuMs = (serverCpuMs(b.pid) - loginCpu) / logins.count;
      const loginRatio = logins.perSecond / rawVerify.perSecond;
      record(
        {
          row: "3",
          backend,
          what: "password logins (BeginAuth, choice, form), 8 clients",
          measured: fmt(logins),
          ceiling: `raw argon2id verify: ${rawVerify.perSecond.toFixed(1)}/s`,
          ratio: loginRatio,
          goal: "≥ 0.85",
        },
        loginRatio >= 0.85 && logins.errors === 0,
      );
      cpuRow("3", "password login", loginCpuMs, "verify", rawVerify);
      const rawHash = await load({
        kind: "raw-argon2",
        op: "hash",
        ...argon2,
        concurrency: 8,
        durationMs: size.durationMs,
      });
      const regCpu = serverCpuMs(b.pid);
      const regs = await load({
        kind: "registrations",
        url: b.url,
        concurrency: 8,
        durationMs: size.durationMs,
      });
      const regCpuMs = (serverCpuMs(b.pid) - regCpu) / regs.count;
      const regRatio = regs.perSecond / rawHash.perSecond;
      record(
        {
          row: "4",
          backend,
          what: "registrations, 8 clients",
          measured: fmt(regs),
          ceiling: `raw argon2id hash: ${rawHash.perSecond.toFixed(1)}/s`,
          ratio: regRatio,
          goal: "≥ 0.85",
        },
        regRatio >= 0.85 && regs.errors === 0,
      );
      cpuRow("4", "registration", regCpuMs, "hash", rawHash);
    }

    // Row 9: Introspect on the internal port against Key on the public one, same stack.
    if (wants("9")) {
      const common = { kind: "unary", protocol: "connect-h1", concurrency: 64 } as const;
      const durationMs = Math.ceil(size.durationMs / 2);
      const keys: Result[] = [];
      const introspects: Result[] = [];
      for (let round = 0; round < 3; round++) {
        keys.push(await load({ ...common, url: b.url, method: "key", durationMs }));
        introspects.push(
          await load({
            ...common,
            url: b.internalUrl,
            method: "introspect",
            token: user.token,
            durationMs,
          }),
        );
      }
      const key = median(keys);
      const introspect = median(introspects);
      const ratio = introspect.perSecond / key.perSecond;
      record(
        {
          row: "9",
          backend,
          what: "Introspect on the internal port, connect-h1, 64 clients (median of 3)",
          measured: fmt(introspect),
          ceiling: `Key: ${fmt(key)}`,
          ratio,
          goal: "≥ 0.9",
        },
        ratio >= 0.9 && introspect.errors === 0 && key.errors === 0,
      );
    }

    // Rows 10 and 11: what the limits cost, and a guessing client held to the schedule.
    if (wants("10") || wants("11")) {
      const users: { email: string; password: string }[] = [];
      for (let i = 0; i < 8; i++) {
        const { email, password } = await registerUser(b.url, 2000 + i);
        users.push({ email, password });
      }
      const logins = (url: string, durationMs = size.durationMs) =>
        load({ kind: "logins", url, users, concurrency: 8, durationMs });
      if (wants("10")) {
        // Limits on: every limit at work, the per-address rates raised past what one load
        // generator (one address) sends, so the bookkeeping runs and nothing is refused.
        const high = "100000000/1m";
        const limitsOn = {
          LIMIT_BEGIN_AUTH: high,
          LIMIT_FORMS: high,
          LIMIT_REGISTRATIONS: high,
          LIMIT_LIVE_FLOWS: "1000000",
        };
        const off: Result[] = [];
        const on: Result[] = [];
        for (let round = 0; round < 3; round++) {
          off.push(await logins(b.url, Math.ceil(size.durationMs / 2)));
          await b.stop();
          const limited = await startServer({ ...envB, ...limitsOn });
          servers.push(limited);
          on.push(await logins(limited.url, Math.ceil(size.durationMs / 2)));
          await limited.stop();
          b = await startServer(envB);
          servers.push(b);
        }
        const withOff = median(off);
        const withOn = median(on);
        const ratio = withOn.perSecond / withOff.perSecond;
        record(
          {
            row: "10",
            backend,
            what: "password logins with every limit on, 8 clients (median of 3)",
            measured: fmt(withOn),
            ceiling: `limits off: ${fmt(withOff)}`,
            ratio,
            goal: "≥ 0.95",
          },
          ratio >= 0.95 && withOn.errors === 0,
        );
      }
      if (wants("11")) {
        const victim = users[0] as (typeof users)[number];
        const others = users.slice(1);
        const normal = (durationMs: number) =>
          load({ kind: "logins", url: b.url, users: others, concurrency: 4, durationMs });
        const alone = await normal(size.durationMs);
        const [beside, guessing] = await Promise.all([
          normal(size.durationMs),
          load({
            kind: "guesses",
            url: b.url,
            email: victim.email,
            localAddress: "127.0.0.2",
            concurrency: 4,
            durationMs: size.durationMs,
          }),
        ]);
        // The default schedule: 5 failures, then waits of 1 s, 2 s, 4 s… (LOGIN_*).
        let allowed = 5;
        for (let at = 1000, wait = 1000; at <= size.durationMs; wait *= 2, at += wait) allowed++;
        const verified = guessing.extra?.verified ?? 0;
        const latency = beside.p99Ms / alone.p99Ms;
        record(
          {
            row: "11",
            backend,
            what: "a guessing client (4 loops, one account, another address) beside normal logins",
            measured: `guesses verified ${verified} of ${guessing.count} (schedule allows ${allowed}); normal logins ${fmt(beside)}`,
            ceiling: `normal logins alone: ${fmt(alone)}`,
            ratio: latency,
            goal: "verified ≤ schedule, p99 ≤ 1.5× alone",
          },
          verified <= allowed && latency <= 1.5 && beside.errors === 0,
        );
      }
    }

    // Row 5: open streams and idle connections, each on a fresh server process
    // (bench/stream-rows.ts); B is started again for the rows after it.
    if (wants("5")) {
      await b.stop();
      await streamRows(streamHarness(backend, envB, servers));
      b = await startServer(envB);
      servers.push(b);
    }

    // Row 6: LoginFederated with the homeserver's key cached, against raw Ed25519 verifies.
    if (wants("6")) {
      const portA = await freePort();
      const a = await startServer({
        ...dbA.env,
        PORT: String(portA),
        SERVER_ID: `127.0.0.1:${portA}`,
        FEDERATION_ALLOW_INSECURE: "true",
      });
      servers.push(a);
      const alice = await registerUser(a.url, 999);
      const onA = client(a.url);
      const tokens: { sig: string; data: string }[] = [];
      for (let i = 0; i < size.tokens; i += 50) {
        const batch = await Promise.all(
          Array.from({ length: Math.min(50, size.tokens - i) }, () =>
            onA.federate({ serverId: envB.SERVER_ID }, { headers: { authorization: alice.token } }),
          ),
        );
        for (const { token } of batch) {
          tokens.push({
            sig: Buffer.from(token?.sig ?? []).toString("base64"),
            data: Buffer.from(token?.data ?? []).toString("base64"),
          });
        }
      }
      // One login first, so B has A's key cached.
      const warm = tokens.pop();
      if (warm)
        await client(b.url).loginFederated({
          serverId: a.id,
          authToken: {
            sig: Buffer.from(warm.sig, "base64"),
            data: Buffer.from(warm.data, "base64"),
          },
        });
      const noble = await load({
        kind: "raw-ed25519",
        impl: "noble",
        durationMs: size.durationMs / 2,
      });
      const node = await load({
        kind: "raw-ed25519",
        impl: "node",
        durationMs: size.durationMs / 2,
      });
      const fed = await load({
        kind: "federated",
        url: b.url,
        issuer: a.id,
        tokens,
        concurrency: 16,
      });
      const fedRatio = fed.perSecond / noble.perSecond;
      record(
        {
          row: "6",
          backend,
          what: "LoginFederated, key cached, 16 clients",
          measured: fmt(fed),
          ceiling: `raw verify: @noble/ed25519 ${noble.perSecond.toFixed(0)}/s, node:crypto ${node.perSecond.toFixed(0)}/s`,
          ratio: fedRatio,
          goal: "≥ 0.8",
        },
        fedRatio >= 0.8 && fed.errors === 0,
      );
    }

    // Row 7: start-up to /readyz on the existing database.
    if (wants("7")) {
      await b.stop();
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        b = await startServer(envB);
        servers.push(b);
        times.push(b.readyMs);
        await b.stop();
      }
      times.sort((x, y) => x - y);
      const middle = times[1] ?? 0;
      record(
        {
          row: "7",
          backend,
          what: "start-up to /readyz, existing database",
          measured: `median ${middle.toFixed(0)} ms of 3 (${times.map((t) => t.toFixed(0)).join(", ")})`,
          ceiling: "—",
          ratio: undefined,
          goal: "< 1 s",
        },
        middle < 1000,
      );
    }

    // Row 8: an idle server's memory on a fresh database and after a restart on it.
    if (wants("8")) {
      const fresh = await freshDatabase(backend);
      const port = await freePort();
      const env = { ...fresh.env, PORT: String(port), SERVER_ID: `127.0.0.1:${port}` };
      const idleRss: number[] = [];
      try {
        for (let start = 0; start < 2; start++) {
          const server = await startServer(env);
          servers.push(server);
          // Whatever start-up left to collect is collected meanwhile.
          await new Promise((r) => setTimeout(r, smoke ? 1000 : 10_000));
          idleRss.push(serverRssMb(server.pid));
          await server.stop();
        }
      } finally {
        await fresh.drop();
      }
      const [first = 0, restart = 0] = idleRss;
      const goals = backend === "pglite" ? { first: 250, restart: 150 } : undefined;
      record(
        {
          row: "8",
          backend,
          what: "idle RSS: first start on a fresh database, then a restart",
          measured: `${first.toFixed(0)} MB, then ${restart.toFixed(0)} MB`,
          ceiling: "—",
          ratio: undefined,
          goal: goals ? `≤ ${goals.first} MB, ≤ ${goals.restart} MB` : "— (for comparison)",
        },
        goals === undefined || (first <= goals.first && restart <= goals.restart),
      );
    }
  } finally {
    for (const s of servers) await s.stop();
    await dbA.drop();
    await dbB.drop();
  }
}

/** Row 5's harness: servers on `env`'s database, each tracked in `servers` so that none outlives the run. */
function streamHarness(backend: Backend, env: Record<string, string>, servers: Server[]) {
  return {
    size,
    async start(extra: Record<string, string> = {}) {
      const server = await startServer({ ...env, ...extra });
      servers.push(server);
      return server;
    },
    load,
    record: (row: StreamRow, ok: boolean) => record({ ...row, backend }, ok),
  };
}

/** `--rows 5`: row 5 alone, on its own database. */
async function benchStreamRows(backend: Backend): Promise<void> {
  process.stderr.write(`\n${backend}\n`);
  const db = await freshDatabase(backend);
  const port = await freePort();
  const servers: Server[] = [];
  try {
    await streamRows(
      streamHarness(
        backend,
        { ...db.env, PORT: String(port), SERVER_ID: `127.0.0.1:${port}` },
        servers,
      ),
    );
  } finally {
    for (const s of servers) await s.stop();
    await db.drop();
  }
}

// The smoke run proves the harness on the database CI certainly has.
const backendsToRun = [
  ...(listArg("--backends") ?? (smoke ? ["postgres"] : ["postgres", "pglite"])),
];
const unknownBackend = backendsToRun.find((b) => b !== "postgres" && b !== "pglite");
if (unknownBackend) throw new Error(`--backends: ${unknownBackend} is not postgres or pglite`);
// Row 5 alone needs no other server: its own database and processes.
const onlyStreams = onlyRows?.size === 1 && onlyRows.has("5");
for (const backend of backendsToRun as Backend[]) {
  await (onlyStreams ? benchStreamRows(backend) : benchBackend(backend));
}

const cpu = cpus()[0]?.model ?? "unknown CPU";
process.stdout.write(
  [
    `cadenza bench${smoke ? " (smoke: tiny sizes, numbers mean nothing)" : ""}: ${new Date().toISOString()}`,
    `machine: ${cpus().length} × ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; argon2id m=${argon2.memoryKib} t=${argon2.iterations} p=${argon2.parallelism}`,
    "",
    "| row | database | what | measured | ceiling (same run) | ratio | goal | met |",
    "|---|---|---|---|---|---|---|---|",
    ...rows.map(
      (r) =>
        `| ${r.row} | ${r.backend} | ${r.what} | ${r.measured} | ${r.ceiling} | ${r.ratio === undefined ? "—" : r.ratio.toFixed(2)} | ${r.goal} | ${r.ok ? "yes" : "**no**"} |`,
    ),
    "",
  ].join("\n"),
);
