/**
 * A load-generating process for `npm run bench`: runs one task, given as a
 * JSON file named by argv[2], against a cadenza on loopback (or raw crypto for the ceilings),
 * and prints its result as one JSON line. Every loop is bounded in time.
 */
import { createPublicKey, verify as nodeVerify } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { performance } from "node:perf_hooks";
import { create, toBinary } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import * as ed from "@noble/ed25519";
import { hash, verify } from "@node-rs/argon2";
import { WebSocket } from "ws";
import { generateKeyPair, sign } from "../src/federation/ed25519.js";
import { HomeserverService } from "../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { AuthService, StreamStepsRequestSchema } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { choice, loginForm, registerForm } from "./forms.js";

/** connect-h1: Connect's binary codec; connect-json-h1: its JSON; grpc-web-h1: gRPC-Web (binary). */
export type Protocol = "connect-h1" | "connect-json-h1" | "grpc-web-h1" | "grpc-h2";
export type StreamProtocol = "connect-h1" | "grpc-h2" | "hrpc-ws";

export type Task =
  | {
      kind: "unary";
      url: string;
      protocol: Protocol;
      /** introspect: HomeserverService on the internal port (`url` is then that port's). */
      method: "key" | "checkLoggedIn" | "introspect";
      token?: string;
      concurrency: number;
      durationMs: number;
    }
  | {
      kind: "logins";
      url: string;
      users: { email: string; password: string }[];
      concurrency: number;
      durationMs: number;
      /** The loopback address to connect from (another client address), default 127.0.0.1. */
      localAddress?: string;
    }
  | {
      /** Wrong passwords for one account, as fast as answers come, from `localAddress`. */
      kind: "guesses";
      url: string;
      email: string;
      localAddress: string;
      concurrency: number;
      durationMs: number;
    }
  | { kind: "registrations"; url: string; concurrency: number; durationMs: number }
  | {
      kind: "raw-argon2";
      op: "verify" | "hash";
      memoryKib: number;
      iterations: number;
      parallelism: number;
      concurrency: number;
      durationMs: number;
    }
  | { kind: "raw-ed25519"; impl: "noble" | "node"; durationMs: number }
  | {
      kind: "streams";
      url: string;
      protocol: StreamProtocol;
      count: number;
      samples: number;
      serverPid: number;
    }
  | {
      /** hRPC WebSockets that complete the handshake and never send their request. */
      kind: "idle-websockets";
      url: string;
      count: number;
      serverPid: number;
    }
  | {
      /** HTTP/1.1 keep-alive connections that make one call and then stay idle. */
      kind: "idle-http1";
      url: string;
      count: number;
      serverPid: number;
    }
  | {
      kind: "federated";
      url: string;
      issuer: string;
      tokens: { sig: string; data: string }[];
      concurrency: number;
    };

export interface Result {
  count: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  extra?: Record<string, number>;
}

const managers: Http2SessionManager[] = [];
function transport(url: string, protocol: Protocol, localAddress?: string): Transport {
  if (protocol === "connect-h1" || protocol === "connect-json-h1") {
    return createConnectTransport({
      baseUrl: url,
      httpVersion: "1.1",
      useBinaryFormat: protocol === "connect-h1",
      ...(localAddress ? { nodeOptions: { localAddress } } : {}),
    });
  }
  if (protocol === "grpc-web-h1") {
    return createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true });
  }
  const sessionManager = new Http2SessionManager(url);
  managers.push(sessionManager);
  return createGrpcTransport({ baseUrl: url, sessionManager });
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

/** Runs `op` from `concurrency` loops until `durationMs` passes (or `op` says stop). */
async function closedLoop(
  concurrency: number,
  durationMs: number,
  op: (worker: number, i: number) => Promise<boolean | undefined>,
): Promise<Result> {
  const latencies: number[] = [];
  let errors = 0;
  const start = performance.now();
  const deadline = start + durationMs;
  let firstError: unknown;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      for (let i = 0; performance.now() < deadline; i++) {
        const t = performance.now();
        try {
          if ((await op(worker, i)) === false) return;
          latencies.push(performance.now() - t);
        } catch (err) {
          errors++;
          firstError ??= err;
          if (errors > 1000) throw err;
        }
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  if (firstError && latencies.length === 0) throw firstError;
  const sorted = Float64Array.from(latencies).sort();
  return {
    count: latencies.length,
    seconds,
    perSecond: latencies.length / seconds,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    errors,
  };
}

const utf8 = new TextEncoder();

async function login(client: Client<typeof AuthService>, email: string, password: string) {
  const { authId } = await client.beginAuth({});
  await client.nextStep({ authId, step: choice("login") });
  const res = await client.nextStep({ authId, step: loginForm(email, password) });
  if (res.step?.step.case !== "session") throw new Error("login did not end in a session");
}

async function run(task: Task): Promise<Result> {
  switch (task.kind) {
    case "unary": {
      const via = transport(task.url, task.protocol);
      const client = createClient(AuthService, via);
      const homeserver = createClient(HomeserverService, via);
      const headers = { authorization: task.token ?? "" };
      const sessionToken = task.token ?? "";
      return closedLoop(task.concurrency, task.durationMs, async () => {
        if (task.method === "key") await client.key({});
        else if (task.method === "introspect") await homeserver.introspect({ sessionToken });
        else await client.checkLoggedIn({}, { headers });
        return true;
      });
    }
    case "guesses":
      return guesses(task);
    case "logins": {
      const client = createClient(
        AuthService,
        transport(task.url, "connect-h1", task.localAddress),
      );
      return closedLoop(task.concurrency, task.durationMs, async (worker, i) => {
        const user = task.users[(worker + i * task.concurrency) % task.users.length];
        if (!user) return false;
        await login(client, user.email, user.password);
        return true;
      });
    }
    case "registrations": {
      const client = createClient(AuthService, transport(task.url, "connect-h1"));
      const tag = `${process.pid}-${Date.now().toString(36)}`;
      return closedLoop(task.concurrency, task.durationMs, async (worker, i) => {
        const { authId } = await client.beginAuth({});
        await client.nextStep({ authId, step: choice("register") });
        const name = `b${tag}-${worker}-${i}`;
        const res = await client.nextStep({
          authId,
          step: registerForm(
            `${name}@bench.example.org`,
            name.slice(0, 32),
            `bench password ${name}`,
          ),
        });
        if (res.step?.step.case !== "session")
          throw new Error("registration did not end in a session");
        return true;
      });
    }
    case "raw-argon2": {
      const options = {
        algorithm: 2 as never,
        memoryCost: task.memoryKib,
        timeCost: task.iterations,
        parallelism: task.parallelism,
        outputLen: 32,
      };
      const phc = await hash("bench password", options);
      // CPU of every thread of this process (argon2 runs on libuv's), per operation.
      const cpuBefore = process.cpuUsage();
      const result = await closedLoop(task.concurrency, task.durationMs, async () => {
        if (task.op === "verify") await verify(phc, "bench password");
        else await hash("bench password", options);
        return true;
      });
      const cpu = process.cpuUsage(cpuBefore);
      return { ...result, extra: { cpuMsPerOp: (cpu.user + cpu.system) / 1000 / result.count } };
    }
    case "raw-ed25519": {
      const { secretKey, publicKey } = generateKeyPair();
      const message = utf8.encode("x".repeat(60));
      const sig = sign(message, secretKey);
      const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), publicKey]);
      const key = createPublicKey({ key: spki, format: "der", type: "spki" });
      return closedLoop(1, task.durationMs, async () => {
        // Batches of 50 synchronous verifies per turn of the loop.
        for (let j = 0; j < 50; j++) {
          const ok =
            task.impl === "noble"
              ? verifyNoble(sig, message, publicKey)
              : nodeVerify(null, message, key, sig);
          if (!ok) throw new Error("verify failed");
        }
        return true;
      }).then((r) => ({ ...r, count: r.count * 50, perSecond: r.perSecond * 50 }));
    }
    case "federated": {
      const client = createClient(AuthService, transport(task.url, "connect-h1"));
      let next = 0;
      return closedLoop(task.concurrency, 120_000, async () => {
        const token = task.tokens[next++];
        if (!token) return false;
        await client.loginFederated({
          serverId: task.issuer,
          authToken: {
            sig: Buffer.from(token.sig, "base64"),
            data: Buffer.from(token.data, "base64"),
          },
        });
        return true;
      });
    }
    case "streams":
      return streams(task);
    case "idle-websockets":
    case "idle-http1":
      return idleConnections(task);
  }
}

/**
 * A password-guessing client: wrong passwords for one account, each sent as
 * soon as the last was answered. `extra` counts the guesses the server
 * verified (answered as a wrong password) and those it refused unverified
 * (throttled by the login schedule).
 */
async function guesses(task: Extract<Task, { kind: "guesses" }>): Promise<Result> {
  const client = createClient(AuthService, transport(task.url, "connect-h1", task.localAddress));
  let verified = 0;
  let throttled = 0;
  let other = 0;
  const deadline = performance.now() + task.durationMs;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: task.concurrency }, async (_, worker) => {
      for (let i = 0; performance.now() < deadline; i++) {
        try {
          await login(client, task.email, `wrong guess ${worker}-${i}`);
          other++;
        } catch (err) {
          const code = ConnectError.from(err).code;
          if (code === Code.Unauthenticated) verified++;
          else if (code === Code.ResourceExhausted) throttled++;
          else other++;
        }
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  const count = verified + throttled + other;
  return {
    count,
    seconds,
    perSecond: count / seconds,
    p50Ms: 0,
    p99Ms: 0,
    errors: other,
    extra: { verified, throttled },
  };
}

/** Opens `count` StreamSteps calls, then measures NextStep-to-stream delay on `samples` of them. */
async function streams(task: Extract<Task, { kind: "streams" }>): Promise<Result> {
  const control = createClient(AuthService, transport(task.url, "connect-h1"));
  const abort = new AbortController();
  const arrivals = new Map<string, (at: number) => void>();
  const sockets: WebSocket[] = [];
  const ids: string[] = [];
  let opened = 0;
  let errors = 0;

  // Opens one stream; resolves once it is open, and reports its first step's arrival.
  const open =
    task.protocol === "hrpc-ws"
      ? (authId: string) =>
          new Promise<void>((resolve) => {
            const url = `${task.url.replace(/^http/, "ws")}/protocol.auth.v1.AuthService/StreamSteps`;
            const ws = new WebSocket(url, ["hrpc1"]);
            sockets.push(ws);
            ws.once("open", () => {
              ws.send(
                toBinary(StreamStepsRequestSchema, create(StreamStepsRequestSchema, { authId })),
              );
              opened++;
              resolve();
            });
            ws.once("message", () => arrivals.get(authId)?.(performance.now()));
            ws.once("error", () => {
              if (!abort.signal.aborted) errors++;
              resolve();
            });
          })
      : (() => {
          const client = createClient(AuthService, transport(task.url, task.protocol));
          return (authId: string) =>
            new Promise<void>((resolve) => {
              const stream = client.streamSteps({ authId }, { signal: abort.signal });
              const first = stream[Symbol.asyncIterator]().next();
              opened++;
              resolve();
              first.then(
                (got) => {
                  if (!got.done) arrivals.get(authId)?.(performance.now());
                },
                () => {
                  if (!abort.signal.aborted) errors++;
                },
              );
            });
        })();

  const baseRssKb = serverRssKb(task.serverPid);
  const start = performance.now();
  for (let batch = 0; batch < task.count; batch += 100) {
    const size = Math.min(100, task.count - batch);
    const begun = await Promise.all(Array.from({ length: size }, () => control.beginAuth({})));
    for (const { authId } of begun) {
      ids.push(authId);
      await open(authId);
    }
  }
  const openSeconds = (performance.now() - start) / 1000;
  // Let every stream attach on the server before measuring.
  await new Promise((r) => setTimeout(r, Math.max(1000, task.count / 5)));
  const rssKb = serverRssKb(task.serverPid);

  const latencies: number[] = [];
  const step = Math.max(1, Math.floor(ids.length / task.samples));
  for (let i = 0; i < ids.length && latencies.length < task.samples; i += step) {
    const authId = ids[i] as string;
    const arrived = new Promise<number>((resolve) => arrivals.set(authId, resolve));
    const sent = performance.now();
    await control.nextStep({ authId });
    const at = await Promise.race([
      arrived,
      new Promise<number>((r) => setTimeout(() => r(-1), 5000)),
    ]);
    if (at < 0) errors++;
    else latencies.push(at - sent);
  }
  abort.abort();
  for (const ws of sockets) ws.terminate();
  const sorted = Float64Array.from(latencies).sort();
  return {
    count: opened,
    seconds: openSeconds,
    perSecond: opened / openSeconds,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    errors,
    extra: { ...memoryOf(baseRssKb, rssKb, opened), samples: latencies.length },
  };
}

/** Server memory with `count` connections open, against the same server before they opened. */
function memoryOf(baseRssKb: number, rssKb: number, count: number): Record<string, number> {
  return {
    rssMb: rssKb / 1024,
    baseRssMb: baseRssKb / 1024,
    perConnectionKb: count > 0 ? (rssKb - baseRssKb) / count : 0,
  };
}

/**
 * Opens `count` connections that then sit idle (hRPC WebSockets that never
 * send their request, or HTTP/1.1 keep-alive connections after one call),
 * and reports the server's memory with all of them open. A connection the
 * server closed before the measurement was taken is an error.
 */
async function idleConnections(
  task: Extract<Task, { kind: "idle-websockets" | "idle-http1" }>,
): Promise<Result> {
  const target = new URL(task.url);
  const wsUrl = `${task.url.replace(/^http/, "ws")}/protocol.auth.v1.AuthService/StreamSteps`;
  const open: { closed: boolean; end(): void }[] = [];
  let errors = 0;

  const openWebSocket = () =>
    new Promise<void>((resolve) => {
      const ws = new WebSocket(wsUrl, ["hrpc1"]);
      const conn = { closed: false, end: () => ws.terminate() };
      ws.once("open", () => {
        open.push(conn);
        resolve();
      });
      ws.once("close", () => {
        conn.closed = true;
        resolve();
      });
      ws.on("error", () => {
        if (!conn.closed) errors++;
        conn.closed = true;
        resolve();
      });
    });
  const openKeepAlive = () =>
    new Promise<void>((resolve) => {
      const socket = netConnect({ host: target.hostname, port: Number(target.port) });
      const conn = { closed: false, end: () => socket.destroy() };
      let head = "";
      socket.setEncoding("latin1");
      socket.on("data", (chunk: string) => {
        if (head.includes("\r\n\r\n")) return;
        head += chunk;
        if (!head.includes("\r\n\r\n")) return;
        if (head.startsWith("HTTP/1.1 200")) open.push(conn);
        else errors++;
        resolve();
      });
      socket.once("close", () => {
        conn.closed = true;
        resolve();
      });
      socket.on("error", () => {
        if (!conn.closed) errors++;
        conn.closed = true;
        resolve();
      });
      socket.write(`GET /healthz HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`);
    });
  const openOne = task.kind === "idle-websockets" ? openWebSocket : openKeepAlive;

  const baseRssKb = serverRssKb(task.serverPid);
  const start = performance.now();
  for (let batch = 0; batch < task.count; batch += 100) {
    await Promise.all(Array.from({ length: Math.min(100, task.count - batch) }, openOne));
  }
  const openSeconds = (performance.now() - start) / 1000;
  // Let the server finish with every handshake and response before measuring.
  await new Promise((r) => setTimeout(r, Math.max(1000, task.count / 5)));
  const rssKb = serverRssKb(task.serverPid);
  const stillOpen = open.filter((c) => !c.closed).length;
  errors += open.length - stillOpen;
  for (const c of open) c.end();
  return {
    count: stillOpen,
    seconds: openSeconds,
    perSecond: open.length / openSeconds,
    p50Ms: 0,
    p99Ms: 0,
    errors,
    extra: memoryOf(baseRssKb, rssKb, stillOpen),
  };
}

function serverRssKb(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const task = JSON.parse(readFileSync(process.argv[2] ?? "", "utf8")) as Task;
run(task).then(
  (result) => {
    for (const m of managers) m.abort();
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(
      `load task ${task.kind} failed: ${err instanceof Error ? err.stack : err}\n`,
    );
    process.exit(1);
  },
);

/** @noble/ed25519's strict (RFC 8032, not ZIP-215) verify: row 6's ceiling. */
function verifyNoble(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  try {
    return ed.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}
