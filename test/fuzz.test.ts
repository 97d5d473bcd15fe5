import { createHash } from "node:crypto";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { type Client, Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import fc from "fast-check";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { publicKeyOf, sign } from "../src/federation/ed25519.js";
import { AuthService, KeyResponseSchema } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { newUser, register } from "./helpers/flow.js";
import {
  describeCase,
  type FuzzCase,
  type FuzzProtocol,
  type FuzzWorld,
  fuzzProtocols,
  isMethodPath,
  requestFor,
} from "./helpers/fuzz-requests.js";
import { type Answer, closeWire, sendRaw, sendWs, type WsAnswer } from "./helpers/wire.js";

/**
 * The fuzz suite: fast-check generates batches of requests (bodies,
 * envelopes, headers) for every method of the public port (AuthService,
 * AccountService, PasskeyService) and for paths that are none, in every
 * protocol, and sends them to one in-process server. Whatever
 * is sent, no answer is a server fault (Internal, Unavailable, HTTP 5xx),
 * every error carries a Harmony identifier, nothing is logged at error, the
 * process does not crash, and after each batch a normal BeginAuth + NextStep
 * still succeeds.
 *
 * Seeded and bounded: FUZZ_SEED picks the seed (printed in the title and on
 * failure), FUZZ_RUNS the batches per protocol. The default is what CI runs.
 */

const DEFAULT_SEED = 20260514;
const DEFAULT_RUNS = 40;
const seed = integerFromEnv("FUZZ_SEED", DEFAULT_SEED);
const runs = integerFromEnv("FUZZ_RUNS", DEFAULT_RUNS);
const unbounded = process.env.FUZZ_RUNS !== undefined;
/**
 * With the default runs, each protocol's property starts no batch after this
 * long, so a slow machine stays within CI's budget. (fast-check's own
 * interruptAfterTimeLimit would drop the batch in flight, and with it a
 * failure it was about to report.)
 */
const PROPERTY_TIME_LIMIT_MS = 3_000;
/** No single request may take longer: a hang is a failure. */
const REQUEST_TIMEOUT_MS = 3_000;
const READ_MAX_BYTES = 4096;

function integerFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer, not ${raw}`);
  return n;
}

/** Every log line at error or above, and every uncaught exception or rejection. */
const faults: string[] = [];
const logger = pino(
  { level: "debug" },
  {
    write(text: string) {
      const level = Number(/^\{"level":(\d+)/.exec(text)?.[1] ?? 0);
      if (level >= 50) faults.push(`logged at ${level === 50 ? "error" : "fatal"}: ${text.trim()}`);
    },
  },
);
const onUncaught = (err: unknown) =>
  faults.push(`uncaught: ${(err as Error)?.stack ?? String(err)}`);

let database: TestDatabase;
let ctx: AppContext;
let server: RunningServer;
let peer: Server;
let world: FuzzWorld;
let client: Client<typeof AuthService>;

/** The fake homeserver federation is allowed with: it answers Key over hRPC with a fixed key. */
const peerSeed = createHash("sha256").update("cadenza fuzz peer").digest();
function startPeer(): Promise<Server> {
  const body = toBinary(
    KeyResponseSchema,
    create(KeyResponseSchema, { key: publicKeyOf(peerSeed) }),
  );
  const s = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/hrpc", "content-length": body.length });
      res.end(body);
    });
  });
  s.listen(0, "127.0.0.1");
  return once(s, "listening").then(() => s);
}

beforeAll(async () => {
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onUncaught);
  peer = await startPeer();
  const peerServerId = `127.0.0.1:${(peer.address() as AddressInfo).port}`;
  const ownServerId = "fuzz.cadenza.test:2289";
  database = await pglite.open();
  ctx = await createAppContext(
    testConfig({
      READ_MAX_BYTES: String(READ_MAX_BYTES),
      SHUTDOWN_GRACE: "1s",
      HRPC_STREAM_REQUEST_TIMEOUT: "200ms",
      SERVER_ID: ownServerId,
      FEDERATION_ALLOW: peerServerId,
      FEDERATION_ALLOW_INSECURE: "true",
      FEDERATION_TIMEOUT: "1s",
    }),
    { db: database.db, hasher: fastHasher, logger, background: false },
  );
  server = await startServer(ctx);
  client = createClient(
    AuthService,
    createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
  );

  // Flows at each step, and sessions, so that valid requests reach the domain.
  const authIds: string[] = [];
  for (let i = 0; i < 8; i++) authIds.push(await ctx.flows.begin());
  for (const [i, authId] of authIds.entries()) {
    await ctx.flows.advance(authId, { kind: "current" });
    if (i % 3 === 1) await ctx.flows.advance(authId, { kind: "choice", choice: "login" });
    if (i % 3 === 2) await ctx.flows.advance(authId, { kind: "choice", choice: "register" });
  }
  const sessionTokens = [
    (await register(client, newUser())).sessionToken,
    (await register(client, newUser())).sessionToken,
  ];
  world = {
    readMaxBytes: READ_MAX_BYTES,
    authIds,
    sessionTokens,
    ownServerId,
    peerServerId,
    signAsPeer: (data) => sign(data, peerSeed),
    nowSeconds: BigInt(Math.floor(Date.now() / 1000)),
  };
});

afterAll(async () => {
  closeWire();
  await server?.close();
  await ctx?.close();
  await database?.close();
  peer?.close();
  process.off("uncaughtException", onUncaught);
  process.off("unhandledRejection", onUncaught);
});

const serverFaultCodes = new Set([Code.Internal, Code.Unknown, Code.Unavailable, Code.DataLoss]);
const serverFaultIdentifiers = new Set(["hrpc.internal-server-error", "hrpc.unavailable"]);

/** Whether a Content-Type names none of the protocols (a plain 404 may answer it off the method paths). */
function foreign(contentType: string | undefined): boolean {
  const lower = (contentType ?? "").trim().toLowerCase();
  if (/^application\/(grpc|connect\+|json|proto)/.test(lower)) return false;
  return lower.split(";", 1)[0]?.trim() !== "application/hrpc";
}

const headerOf = (c: FuzzCase, name: string) => c.request.headers.find(([n]) => n === name)?.[1];

/** What is wrong with an HTTP answer, or undefined. */
function judgeAnswer(
  method: string,
  path: string,
  contentType: string | undefined,
  a: Answer,
): string | undefined {
  if (a.code !== undefined && serverFaultCodes.has(a.code)) return `a server fault: ${a.summary}`;
  if (a.identifier !== undefined && serverFaultIdentifiers.has(a.identifier)) {
    return `a server fault: ${a.summary}`;
  }
  if (a.status >= 500) {
    // Documented answers of the client's own making: an unknown method or a
    // compressed request (501), a deadline it set that passed (504).
    const unimplemented =
      a.status === 501 &&
      (a.code === Code.Unimplemented || a.identifier === "hrpc.not-implemented");
    const deadline =
      a.status === 504 &&
      (a.code === Code.DeadlineExceeded || a.identifier === "hrpc.deadline-exceeded");
    if (!unimplemented && !deadline) return `HTTP ${a.status}: ${a.summary}`;
  }
  if (a.kind === "error" && a.identifier === undefined) return `no identifier: ${a.summary}`;
  // OPTIONS is CORS's (a preflight), not an RPC: any answer but a fault will do.
  if (a.kind === "plain" && method !== "OPTIONS" && (isMethodPath(path) || !foreign(contentType))) {
    return `not an RPC answer: ${a.summary}`;
  }
  return undefined;
}

function judgeWs(c: Extract<FuzzCase, { kind: "ws" }>, a: WsAnswer): string | undefined {
  if (a.handshake === "refused") {
    const upgrade =
      /\bupgrade\b/i.test(headerOf(c, "connection") ?? "") &&
      (headerOf(c, "upgrade") ?? "").trim() !== "";
    // Every upgrade is hRPC's to answer, whatever its path.
    if (upgrade && a.answer.kind === "plain")
      return `handshake refused without identifier: ${a.answer.summary}`;
    return judgeAnswer(c.request.method, c.request.path, headerOf(c, "content-type"), a.answer);
  }
  for (const f of a.frames) {
    if (f.opcode === 1 && f.identifier === undefined) return "an error frame without identifier";
    if (f.identifier !== undefined && serverFaultIdentifiers.has(f.identifier)) {
      return `a server fault: error frame ${f.identifier}`;
    }
  }
  if (a.stray > 0) return `${a.stray} data frame(s) that are not hRPC frames`;
  if (a.closeCode === 1011) return "closed with 1011 (internal error)";
  // A client that waits, having broken no rule, is owed an hRPC frame.
  if (c.request.ending === "wait" && !c.violation && a.frames.length === 0) {
    return `closed (${a.closeCode ?? "no close frame"}) without an hRPC frame`;
  }
  return undefined;
}

async function sendCase(c: FuzzCase): Promise<string | undefined> {
  if (c.kind === "ws") return judgeWs(c, await sendWs(server.url, c.request, REQUEST_TIMEOUT_MS));
  const answer = await sendRaw(server.url, c.request, REQUEST_TIMEOUT_MS);
  return judgeAnswer(c.request.method, c.request.path, headerOf(c, "content-type"), answer);
}

/** A normal BeginAuth + NextStep over Connect: the server still serves. */
async function stillServes(): Promise<void> {
  const { authId } = await client.beginAuth({}, { timeoutMs: REQUEST_TIMEOUT_MS });
  const { step } = await client.nextStep({ authId }, { timeoutMs: REQUEST_TIMEOUT_MS });
  if (step?.step.case !== "choice") throw new Error(`NextStep answered ${step?.step.case}`);
}

/** Sends a batch at once; throws a report of everything wrong with it. */
async function runBatch(batch: readonly FuzzCase[]): Promise<void> {
  const faultsBefore = faults.length;
  const results = await Promise.allSettled(batch.map(sendCase));
  const problems: string[] = [];
  results.forEach((r, i) => {
    const why = r.status === "rejected" ? (r.reason as Error).message : r.value;
    if (why !== undefined)
      problems.push(`request ${i}: ${why}\n    ${describeCase(batch[i] as FuzzCase)}`);
  });
  try {
    await stillServes();
  } catch (err) {
    problems.push(`the server no longer serves: ${(err as Error).message}`);
  }
  problems.push(...faults.slice(faultsBefore));
  if (problems.length > 0) throw new Error(problems.join("\n"));
}

describe(`fuzz (FUZZ_SEED=${seed}, FUZZ_RUNS=${runs})`, () => {
  it.each(fuzzProtocols)(
    "%s: no server fault, an identifier on every error, still serving",
    async (protocol: FuzzProtocol) => {
      const stopAt = unbounded ? Number.POSITIVE_INFINITY : Date.now() + PROPERTY_TIME_LIMIT_MS;
      let ran = 0;
      let skipped = 0;
      await fc.assert(
        fc.asyncProperty(
          fc.array(requestFor(protocol, world), { minLength: 1, maxLength: 4 }),
          async (batch) => {
            if (Date.now() > stopAt) {
              skipped++; // past the time limit: passes without sending (shrinking stops too)
              return;
            }
            ran++;
            await runBatch(batch);
          },
        ),
        { seed, numRuns: runs },
      );
      if (skipped > 0) {
        console.warn(`fuzz ${protocol}: ${ran} batches sent, the rest skipped (time limit)`);
      }
    },
    unbounded ? 24 * 3600_000 : 30_000,
  );

  it("logged nothing at error and crashed nowhere, late failures included", () => {
    expect(faults).toEqual([]);
  });
});
