import { once } from "node:events";
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";

/**
 * What the proxy does to the database, as a client sees it:
 * - `cut`: closes every connection and refuses new ones (Postgres stopped);
 * - `stall`: stops forwarding in both directions without closing anything,
 *   and accepts new connections that then hear nothing (Postgres frozen with
 *   SIGSTOP: the kernel still completes handshakes and buffers bytes);
 * - `reset`: sends RST on every connection, and on each new one.
 */
export type Fault = "cut" | "stall" | "reset";

export interface FaultProxy {
  readonly port: number;
  /** `url` (a postgres:// URL) pointed at the proxy instead. */
  via(url: string): string;
  /** Connections open through the proxy now. */
  readonly connections: number;
  fault(kind: Fault): Promise<void>;
  /** Forwards again: a stall resumes where it stopped (buffered bytes flow), a cut listens again. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

interface Pair {
  readonly client: Socket;
  readonly upstream: Socket;
}

/** A TCP proxy on 127.0.0.1 to `target`, between cadenza and Postgres, that can fail on demand. */
export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  const pairs = new Set<Pair>();
  let state: "forwarding" | Fault = "forwarding";

  const forward = (pair: Pair): void => {
    pair.client.pipe(pair.upstream);
    pair.upstream.pipe(pair.client);
  };
  const hold = (pair: Pair): void => {
    pair.client.unpipe(pair.upstream);
    pair.upstream.unpipe(pair.client);
    pair.client.pause();
    pair.upstream.pause();
  };

  const server: Server = createServer({ pauseOnConnect: true }, (client) => {
    if (state === "reset") {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(target.port, target.host);
    const pair: Pair = { client, upstream };
    pairs.add(pair);
    const drop = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    if (state === "forwarding") forward(pair);
  });

  const listen = async (port: number): Promise<number> => {
    server.listen(port, "127.0.0.1");
    await once(server, "listening");
    return (server.address() as AddressInfo).port;
  };
  const port = await listen(0);

  return {
    port,
    via(url) {
      const parsed = new URL(url);
      parsed.hostname = "127.0.0.1";
      parsed.port = String(port);
      return parsed.toString();
    },
    get connections() {
      return pairs.size;
    },
    async fault(kind) {
      if (state !== "forwarding") throw new Error(`the proxy is already failing (${state})`);
      state = kind;
      const all = [...pairs];
      switch (kind) {
        case "cut": {
          const closed = new Promise<void>((resolve) => server.close(() => resolve()));
          for (const { client, upstream } of all) {
            client.destroy();
            upstream.destroy();
          }
          await closed;
          break;
        }
        case "stall":
          for (const pair of all) hold(pair);
          break;
        case "reset":
          for (const { client, upstream } of all) {
            client.resetAndDestroy();
            upstream.destroy();
          }
          break;
      }
    },
    async restore() {
      const was = state;
      state = "forwarding";
      if (was === "cut") await listen(port);
      if (was === "stall") for (const pair of pairs) forward(pair);
    },
    async close() {
      state = "forwarding";
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
