import { once } from "node:events";
import { type AddressInfo, createServer, type Socket } from "node:net";

/**
 * A stand-in for a Postgres server on loopback, for answers a real one here
 * cannot be made to give (it trusts 127.0.0.1): `refuse` answers the startup
 * message with an ErrorResponse carrying `sqlstate`; `silent` accepts
 * connections and never says anything.
 */
export async function fakePostgres(
  behaviour: { refuse: { sqlstate: string; message: string } } | "silent",
): Promise<{ url: (user: string, password: string) => string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    if (behaviour === "silent") return;
    const { sqlstate, message } = behaviour.refuse;
    // The startup message (length-prefixed) is all the client sends first
    // without TLS; answer it and hang up, as Postgres does.
    socket.once("data", () => socket.end(errorResponse(sqlstate, message)));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: (user, password) => `postgres://${user}:${password}@127.0.0.1:${port}/cadenza`,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A protocol 3 ErrorResponse: 'E', its length, then typed NUL-terminated fields. */
function errorResponse(sqlstate: string, message: string): Buffer {
  const fields = Buffer.concat([
    ...[
      ["S", "FATAL"],
      ["V", "FATAL"],
      ["C", sqlstate],
      ["M", message],
    ].map(([type, value]) => Buffer.from(`${type}${value}\0`, "utf8")),
    Buffer.from([0]),
  ]);
  const length = Buffer.alloc(4);
  length.writeInt32BE(fields.length + 4);
  return Buffer.concat([Buffer.from("E"), length, fields]);
}
