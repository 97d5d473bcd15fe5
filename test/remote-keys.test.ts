import { once } from "node:events";
import { createServer, type Server, type ServerResponse } from "node:http";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createRemoteKeyStore } from "../src/db/federation-stores.js";
import { HarmonyError } from "../src/errors.js";
import { federationErrors } from "../src/federation/federation-errors.js";
import { createRemoteKeys, REFETCH_INTERVAL_MS } from "../src/federation/remote-keys.js";
import type { ResolveHost } from "../src/federation/server-ids.js";
import { KeyResponseSchema } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { createFakeClock } from "./helpers/clock.js";
import { backends, type TestDatabase } from "./helpers/databases.js";
import { freePort } from "./helpers/server.js";

const TIMEOUT_MS = 300;
const FAILURE_TTL_MS = 60_000;
const fixedMessage = federationErrors.homeserverUnavailable.message;

/** A fake homeserver on loopback: counts requests, and answers as each test says. */
interface FakeHomeserver {
  readonly port: number;
  readonly id: string;
  requests: number;
  answer: (res: ServerResponse) => void;
  readonly server: Server;
}

async function fakeHomeserver(): Promise<FakeHomeserver> {
  const fake = { requests: 0, answer: (_res: ServerResponse) => {} } as FakeHomeserver;
  const server = createServer((req, res) => {
    fake.requests++;
    expect(req.method).toBe("POST");
    expect(req.headers["content-type"]).toBe("application/hrpc");
    fake.answer(res);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  return Object.assign(fake, { server, port, id: `127.0.0.1:${port}` });
}

const keyBody = (length: number) =>
  Buffer.from(
    toBinary(KeyResponseSchema, create(KeyResponseSchema, { key: new Uint8Array(length).fill(7) })),
  );
const hrpc = (res: ServerResponse, body: Buffer, status = 200) => {
  res.writeHead(status, { "content-type": "application/hrpc", "hrpc-version": "1" });
  res.end(body);
};
const validKey = (res: ServerResponse) => hrpc(res, keyBody(32));
const html = (res: ServerResponse) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<html>");
};

/**
 * Names tests resolve without DNS: `*.loopback.test` is 127.0.0.1,
 * `dual.loopback.test` is ::1 then 127.0.0.1, anything else does not exist.
 */
const resolveHost: ResolveHost = async (hostname) => {
  if (hostname === "dual.loopback.test") {
    return [
      { address: "::1", family: 6 },
      { address: "127.0.0.1", family: 4 },
    ];
  }
  if (hostname.endsWith(".loopback.test")) return [{ address: "127.0.0.1", family: 4 }];
  throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" });
};

/** A pino logger whose lines are kept, parsed, for assertions. */
function capturedLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: "warn" },
    { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, lines };
}

/** What a call failed with, as HarmonyError fields. */
async function failure(call: Promise<unknown>) {
  const error = await call.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(HarmonyError);
  const e = error as HarmonyError;
  return { code: e.code, identifier: e.identifier, message: e.message };
}

const unavailable = {
  code: Code.Unavailable,
  identifier: "hrpc.unavailable",
  message: fixedMessage,
};

describe.each(backends)("fetching a homeserver's key over hRPC on $name", (backend) => {
  let database: TestDatabase;
  let home: FakeHomeserver;
  const clock = createFakeClock();
  let log: ReturnType<typeof capturedLogger>;

  beforeAll(async () => {
    database = await backend.open();
    home = await fakeHomeserver();
  });
  afterAll(async () => {
    home.server.closeAllConnections();
    await new Promise((resolve) => home.server.close(resolve));
    await database.close();
  });
  beforeEach(async () => {
    clock.reset();
    await database.db.query("DELETE FROM remote_server_keys");
    home.requests = 0;
    log = capturedLogger();
  });

  const fresh = (config: { allowInsecure?: boolean; maxFetches?: number } = {}) =>
    createRemoteKeys({
      db: database.db,
      clock,
      logger: log.logger,
      config: {
        allowInsecure: config.allowInsecure ?? true,
        keyTtlMs: 86_400_000,
        requestTimeoutMs: TIMEOUT_MS,
        fetchFailureTtlMs: FAILURE_TTL_MS,
        maxFetches: config.maxFetches ?? 16,
      },
      remoteKeyStore: createRemoteKeyStore(),
      resolveHost,
    });

  it("fetches, caches for FEDERATION_KEY_TTL, and refetches at most once a minute", async () => {
    home.answer = validKey;
    const k = fresh();
    expect((await k.get(home.id)).fresh).toBe(true);
    expect((await k.get(home.id)).fresh).toBe(false);
    expect(home.requests).toBe(1);
    expect(await k.refresh(home.id)).toBeUndefined();
    clock.advance(REFETCH_INTERVAL_MS);
    expect(await k.refresh(home.id)).toHaveLength(32);
    expect(home.requests).toBe(2);
    clock.advance(86_400_000);
    expect((await k.get(home.id)).fresh).toBe(true);
  });

  it.each(["home.loopback.test", "dual.loopback.test"])(
    "connects %s to the addresses it resolved to",
    async (name) => {
      // The fake homeserver listens on 127.0.0.1 only: for dual.loopback.test
      // the connection gets there after ::1, by trying each resolved address.
      home.answer = validKey;
      const { publicKey } = await fresh().get(`${name}:${home.port}`);
      expect([...publicKey]).toEqual(Array(32).fill(7));
      expect(home.requests).toBe(1);
    },
  );

  // Every way of failing to reach a homeserver answers the caller alike; only
  // the log (warn, with the server ID) says what happened.
  /** Where a failing case fetches from (the fake homeserver unless said), and how it answers. */
  type FailingCase = {
    readonly id?: () => string | Promise<string>;
    readonly answer?: (res: ServerResponse) => void;
    readonly secure?: boolean;
  };
  it.each<[string, FailingCase, RegExp]>([
    [
      "a name that does not resolve",
      { id: () => "nowhere.example:443" },
      /could not resolve nowhere\.example: getaddrinfo ENOTFOUND/,
    ],
    [
      "a name that resolves to loopback, without FEDERATION_ALLOW_INSECURE",
      { id: () => `https://home.loopback.test:${home.port}`, secure: true },
      /home\.loopback\.test resolves to 127\.0\.0\.1, which is not a public address/,
    ],
    ["a refused port", { id: async () => `127.0.0.1:${await freePort()}` }, /ECONNREFUSED/],
    ["a silent port", { answer: () => {} }, /no answer within 300 ms/],
    ["an answer that is not hRPC", { answer: html }, /Content-Type text\/html/],
    [
      "a redirect",
      {
        answer: (res) => {
          res.writeHead(302, { location: "http://127.0.0.1:1/" });
          res.end();
        },
      },
      /redirects are not followed/,
    ],
    ["a key that is not 32 bytes", { answer: (res) => hrpc(res, keyBody(33)) }, /33 bytes/],
    ["an oversized answer", { answer: (res) => hrpc(res, Buffer.alloc(4096)) }, /larger than 1024/],
    [
      "an hRPC error from the homeserver",
      { answer: (res) => hrpc(res, Buffer.from([0x0a, 0x03, 0x68, 0x2e, 0x78]), 500) },
      /HTTP 500: h\.x/,
    ],
  ])("answers %s with the one Unavailable, and logs the detail", async (_what, given, detail) => {
    if (given.answer) home.answer = given.answer;
    const id = given.id ? await given.id() : home.id;
    const answer = await failure(fresh({ allowInsecure: given.secure !== true }).get(id));
    expect(answer).toEqual(unavailable);

    const warnings = log.lines.filter((l) => l.level === 40);
    expect(warnings).toMatchObject([
      { serverId: id.replace(/^https:\/\//, ""), err: { message: expect.stringMatching(detail) } },
    ]);
    if (given.secure) expect(home.requests).toBe(0);
  });

  it("remembers a failure for FEDERATION_FETCH_FAILURE_TTL, asking nothing of the network meanwhile", async () => {
    home.answer = html;
    const k = fresh();
    expect(await failure(k.get(home.id))).toEqual(unavailable);
    expect(home.requests).toBe(1);

    home.answer = validKey;
    expect(await failure(k.get(home.id))).toEqual(unavailable);
    clock.advance(FAILURE_TTL_MS - 1);
    expect(await failure(k.get(home.id))).toEqual(unavailable);
    expect(home.requests).toBe(1);
    // The repeats are not logged as fetch failures: only the one fetch is.
    expect(log.lines.filter((l) => l.level === 40)).toHaveLength(1);

    clock.advance(1);
    expect((await k.get(home.id)).fresh).toBe(true);
    expect(home.requests).toBe(2);
  });

  it("remembers a failure of a refetch too", async () => {
    home.answer = validKey;
    const k = fresh();
    await k.get(home.id);
    clock.advance(REFETCH_INTERVAL_MS);
    home.answer = html;
    expect(await failure(k.refresh(home.id))).toEqual(unavailable);
    clock.advance(REFETCH_INTERVAL_MS - 1);
    expect(await failure(k.refresh(home.id))).toEqual(unavailable);
    expect(home.requests).toBe(2);
  });

  it("shares one fetch between 20 concurrent callers for one server", async () => {
    const held: ServerResponse[] = [];
    home.answer = (res) => held.push(res);
    const k = fresh();
    const arrived = once(home.server, "request");
    const calls = Array.from({ length: 20 }, () => k.get(home.id));
    await arrived;
    for (const res of held) validKey(res);
    home.answer = validKey;
    const keys = await Promise.all(calls);
    expect(home.requests).toBe(1);
    for (const { publicKey, fresh } of keys) {
      expect([...publicKey]).toEqual(Array(32).fill(7));
      expect(fresh).toBe(true);
    }
  });

  it("shares one failed fetch between 20 concurrent callers, logging it once", async () => {
    home.answer = () => {};
    const k = fresh();
    const answers = await Promise.all(Array.from({ length: 20 }, () => failure(k.get(home.id))));
    expect(home.requests).toBe(1);
    for (const answer of answers) expect(answer).toEqual(unavailable);
    expect(log.lines.filter((l) => l.level === 40)).toHaveLength(1);
  });

  it("answers Unavailable at once beyond FEDERATION_MAX_FETCHES fetches in flight", async () => {
    const held: ServerResponse[] = [];
    home.answer = (res) => held.push(res);
    const k = fresh({ maxFetches: 2 });
    const port = home.port;
    const first = k.get(`a.loopback.test:${port}`);
    const second = k.get(`b.loopback.test:${port}`);
    while (home.requests < 2) await once(home.server, "request");

    // Two fetches are in flight: a third server is refused without a request.
    expect(await failure(k.get(`c.loopback.test:${port}`))).toEqual(unavailable);
    expect(home.requests).toBe(2);
    expect(log.lines.some((l) => String(l.msg).includes("FEDERATION_MAX_FETCHES"))).toBe(true);
    // A server whose fetch is in flight is still served: it joins the fetch.
    const joined = k.get(`a.loopback.test:${port}`);

    for (const res of held) validKey(res);
    home.answer = validKey;
    await Promise.all([first, second, joined]);
    expect(home.requests).toBe(2);
    // Being refused for capacity is not remembered as a failure of that server.
    expect((await k.get(`c.loopback.test:${port}`)).fresh).toBe(true);
    expect(home.requests).toBe(3);
  });
});
