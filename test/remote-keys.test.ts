import { createServer, type Server } from "node:http";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRemoteKeyStore } from "../src/db/federation-stores.js";
import { HarmonyError } from "../src/errors.js";
import { createRemoteKeys, REFETCH_INTERVAL_MS } from "../src/federation/remote-keys.js";
import { KeyResponseSchema } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { createFakeClock } from "./helpers/clock.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";

/** A fake homeserver on loopback whose answer each test sets. */
let answer: (res: import("node:http").ServerResponse) => void;
let requests = 0;
let server: Server;
let serverId: string;
let database: TestDatabase;

beforeAll(async () => {
  database = await pglite.open();
  server = createServer((req, res) => {
    requests++;
    expect(req.method).toBe("POST");
    expect(req.headers["content-type"]).toBe("application/hrpc");
    answer(res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  serverId = `127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await database.close();
});

const keyBody = (length: number) =>
  Buffer.from(
    toBinary(KeyResponseSchema, create(KeyResponseSchema, { key: new Uint8Array(length).fill(7) })),
  );
const hrpc = (res: import("node:http").ServerResponse, body: Buffer, status = 200) => {
  res.writeHead(status, { "content-type": "application/hrpc", "hrpc-version": "1" });
  res.end(body);
};

describe("fetching a homeserver's key over hRPC", () => {
  const clock = createFakeClock();
  const fresh = () =>
    createRemoteKeys({
      db: database.db,
      clock,
      config: { allowInsecure: true, keyTtlMs: 86_400_000, requestTimeoutMs: 300 },
      remoteKeyStore: createRemoteKeyStore(),
    });

  it("fetches, caches for FEDERATION_KEY_TTL, and refetches at most once a minute", async () => {
    answer = (res) => hrpc(res, keyBody(32));
    const k = fresh();
    requests = 0;
    expect((await k.get(serverId)).fresh).toBe(true);
    expect((await k.get(serverId)).fresh).toBe(false);
    expect(requests).toBe(1);
    expect(await k.refresh(serverId)).toBeUndefined();
    clock.advance(REFETCH_INTERVAL_MS);
    expect(await k.refresh(serverId)).toHaveLength(32);
    expect(requests).toBe(2);
    clock.advance(86_400_000);
    expect((await k.get(serverId)).fresh).toBe(true);
  });

  it.each([
    [
      "a redirect",
      (res: import("node:http").ServerResponse) => {
        res.writeHead(302, { location: "http://127.0.0.1:1/" });
        res.end();
      },
      /redirects are not followed/,
    ],
    [
      "a key that is not 32 bytes",
      (res: import("node:http").ServerResponse) => hrpc(res, keyBody(33)),
      /33 bytes/,
    ],
    [
      "an oversized answer",
      (res: import("node:http").ServerResponse) => hrpc(res, Buffer.alloc(4096)),
      /larger than 1024/,
    ],
    [
      "an hRPC error",
      (res: import("node:http").ServerResponse) =>
        hrpc(res, Buffer.from([0x0a, 0x03, 0x68, 0x2e, 0x78]), 500),
      /HTTP 500: h\.x/,
    ],
    [
      "another content type",
      (res: import("node:http").ServerResponse) => {
        res.writeHead(200, { "content-type": "text/html" });
        res.end("<html>");
      },
      /text\/html/,
    ],
    ["no answer in time", () => {}, /no answer within 300 ms/],
  ])("answers %s with Unavailable", async (_what, respond, message) => {
    answer = respond;
    await database.db.query("DELETE FROM remote_server_keys");
    const error = await fresh()
      .get(serverId)
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(error).toBeInstanceOf(HarmonyError);
    expect((error as HarmonyError).code).toBe(Code.Unavailable);
    expect((error as HarmonyError).identifier).toBe("hrpc.unavailable");
    expect((error as HarmonyError).message).toMatch(message);
  });
});
