import type { Socket } from "node:net";

/** The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4). */
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * Reads just enough of a new cleartext connection to tell HTTP/2 prior
 * knowledge from HTTP/1.1, puts the bytes back, and hands the socket on. A
 * client that stops part-way (a lone `P`) waits here until the connection's
 * first-request deadline closes it (connections.ts).
 */
export function sniffHttp2(socket: Socket, handOff: (isHttp2: boolean) => void): void {
  let seen = Buffer.alloc(0);
  const onData = (chunk: Buffer): void => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, HTTP2_PREFACE.length);
    const matches = seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
    if (matches && n < HTTP2_PREFACE.length) return; // could still be HTTP/2: read more
    socket.off("data", onData);
    socket.pause();
    socket.unshift(seen);
    handOff(matches);
    process.nextTick(() => socket.resume());
  };
  socket.on("data", onData);
}
