import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket, WebSocketServer } from "ws";
import { createPinger, type Pinger } from "../src/server/hrpc/pinger.js";

/**
 * The hRPC pinger: a peer that answers pings stays, one that stops answering
 * is terminated after one unanswered interval, whichever bucket it is in.
 */

const INTERVAL_MS = 200;

describe("the hRPC pinger", () => {
  let server: WebSocketServer;
  let pinger: Pinger;
  let url: string;

  beforeAll(async () => {
    pinger = createPinger(INTERVAL_MS, 4);
    server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    server.on("connection", (ws) => pinger.watch(ws));
    await once(server, "listening");
    url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    pinger.close();
    await new Promise((resolve) => server.close(resolve));
  });

  async function connect(autoPong: boolean) {
    const ws = new WebSocket(url, { autoPong });
    let pings = 0;
    ws.on("ping", () => pings++);
    const closed = new Promise<number>((resolve) => ws.once("close", resolve));
    await once(ws, "open");
    return { ws, closed, pings: () => pings };
  }

  it("keeps peers that answer, and terminates one that stops answering", async () => {
    const answering = await Promise.all([1, 2, 3, 4, 5].map(() => connect(true)));
    const silent = await connect(false);
    const started = performance.now();
    const code = await silent.closed;
    const lasted = performance.now() - started;
    // Pinged once, then cut off at its bucket's next visit (no close frame: 1006).
    expect(code).toBe(1006);
    expect(silent.pings()).toBe(1);
    expect(lasted).toBeLessThan(3 * INTERVAL_MS);
    // Two more intervals: every answering peer has been pinged and is still open.
    await new Promise((resolve) => setTimeout(resolve, 2 * INTERVAL_MS));
    for (const peer of answering) {
      expect(peer.ws.readyState).toBe(WebSocket.OPEN);
      expect(peer.pings()).toBeGreaterThanOrEqual(2);
      peer.ws.close();
      await peer.closed;
    }
  });

  it("forgets a socket once it closes", async () => {
    const before = pinger.watching;
    const peer = await connect(true);
    await expect.poll(() => pinger.watching).toBe(before + 1);
    peer.ws.close();
    await peer.closed;
    await expect.poll(() => pinger.watching).toBe(before);
  });
});
