import { connect, type Socket } from "node:net";

/**
 * A raw HTTP/2 client that writes frames itself, for what Node's own client
 * will not do: open more streams than the server allows, or open and reset
 * streams as fast as the socket takes them (rapid reset, CVE-2023-44487).
 */

export const FrameType = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
} as const;

const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const ACK = 0x1;

export const errorCodes = {
  NO_ERROR: 0,
  INTERNAL_ERROR: 2,
  CANCEL: 8,
  REFUSED_STREAM: 7,
  ENHANCE_YOUR_CALM: 11,
} as const;

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header.writeUInt8(type, 3);
  header.writeUInt8(flags, 4);
  header.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

/** An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1). */
function hpackInt(value: number, n: number, firstByte = 0): Buffer {
  const max = (1 << n) - 1;
  if (value < max) return Buffer.from([firstByte | value]);
  const bytes = [firstByte | max];
  let rest = value - max;
  while (rest >= 128) {
    bytes.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** A header block of literal fields without indexing, no Huffman coding. */
export function headerBlock(headers: readonly (readonly [string, string])[]): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of headers) {
    const n = Buffer.from(name);
    const v = Buffer.from(value);
    parts.push(Buffer.from([0]), hpackInt(n.length, 7), n, hpackInt(v.length, 7), v);
  }
  return Buffer.concat(parts);
}

export function headersFrame(
  streamId: number,
  headers: readonly (readonly [string, string])[],
  endStream = false,
): Buffer {
  return frame(
    FrameType.HEADERS,
    END_HEADERS | (endStream ? END_STREAM : 0),
    streamId,
    headerBlock(headers),
  );
}

export function rstStreamFrame(streamId: number, code: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(code);
  return frame(FrameType.RST_STREAM, 0, streamId, payload);
}

export function pingFrame(data: Buffer = Buffer.alloc(8)): Buffer {
  return frame(FrameType.PING, 0, 0, data);
}

export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface RawH2 {
  readonly socket: Socket;
  /** Every frame received so far. */
  readonly frames: Frame[];
  /** Resolves with the first frame received from now on that `match` accepts. */
  next(match: (f: Frame) => boolean): Promise<Frame>;
  /** The first frame received so far that `match` accepts, or the next one to come. */
  find(match: (f: Frame) => boolean): Promise<Frame>;
  /** Resolves once the server has answered a PING sent now: it has processed everything before it. */
  barrier(): Promise<void>;
  /** Resolves when the connection closes. */
  readonly closed: Promise<void>;
  send(...frames: Buffer[]): boolean;
}

/**
 * Connects and exchanges the preface and SETTINGS. With `ackSettings: false`
 * the server's SETTINGS are never acknowledged, as by a client whose first
 * requests race them.
 */
export async function rawH2(
  port: number,
  { host = "127.0.0.1", ackSettings = true }: { host?: string; ackSettings?: boolean } = {},
): Promise<RawH2> {
  const socket = connect(port, host);
  socket.on("error", () => {});
  const frames: Frame[] = [];
  const waiters: { match: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  let buffered = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3);
      if (buffered.length < 9 + length) break;
      const f: Frame = {
        type: buffered.readUInt8(3),
        flags: buffered.readUInt8(4),
        streamId: buffered.readUInt32BE(5) & 0x7fffffff,
        payload: buffered.subarray(9, 9 + length),
      };
      buffered = buffered.subarray(9 + length);
      frames.push(f);
      if (ackSettings && f.type === FrameType.SETTINGS && (f.flags & ACK) === 0) {
        socket.write(frame(FrameType.SETTINGS, ACK, 0));
      }
      for (let i = waiters.length - 1; i >= 0; i--) {
        const w = waiters[i];
        if (w?.match(f)) {
          waiters.splice(i, 1);
          w.resolve(f);
        }
      }
    }
  });
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  const next = (match: (f: Frame) => boolean) =>
    new Promise<Frame>((resolve, reject) => {
      waiters.push({ match, resolve });
      void closed.then(() => reject(new Error("the connection closed")));
    });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  const serverSettings = next((f) => f.type === FrameType.SETTINGS && (f.flags & ACK) === 0);
  socket.write(Buffer.concat([PREFACE, frame(FrameType.SETTINGS, 0, 0)]));
  await serverSettings;
  let pings = 0;
  return {
    socket,
    frames,
    next,
    find: (match) => {
      const seen = frames.find(match);
      return seen ? Promise.resolve(seen) : next(match);
    },
    closed,
    send: (...fs) => socket.write(Buffer.concat(fs)),
    async barrier() {
      const data = Buffer.alloc(8);
      data.writeUInt32BE(++pings);
      const ack = next(
        (f) => f.type === FrameType.PING && (f.flags & ACK) !== 0 && f.payload.equals(data),
      );
      socket.write(pingFrame(data));
      await ack;
    },
  };
}

/** The SETTINGS_MAX_CONCURRENT_STREAMS in a SETTINGS frame, if it has one. */
export function maxConcurrentStreamsOf(settings: Frame): number | undefined {
  for (let i = 0; i + 6 <= settings.payload.length; i += 6) {
    if (settings.payload.readUInt16BE(i) === 0x3) return settings.payload.readUInt32BE(i + 2);
  }
  return undefined;
}
