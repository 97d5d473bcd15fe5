import {
  create,
  type DescField,
  type DescMessage,
  ScalarType,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import fc from "fast-check";
import { TokenDataSchema } from "../../src/gen/cadenza/federation/v1/token_pb.js";

/**
 * fast-check generators of request bodies for any message, read from its
 * descriptor: valid messages (with real auth_ids, sessions and signed
 * tokens where the world has them), mutated ones, protobuf-shaped garbage,
 * JSON garbage and JSON of the wrong types; and envelopes that lie.
 */

/** The real values requests draw on, so that valid messages reach the domain. */
export interface FuzzWorld {
  readonly readMaxBytes: number;
  /**
   * auth_ids of live flows, each past its first step (a stream on a flow
   * with no step yet rightly waits, silent, for one).
   */
  readonly authIds: readonly string[];
  /** Session tokens of registered users. */
  readonly sessionTokens: readonly string[];
  /** This server's ID. */
  readonly ownServerId: string;
  /**
   * The homeserver federation is allowed with (a fake one, on loopback, over
   * http: an ID it cannot be reached by would rightly answer Unavailable).
   */
  readonly peerServerId: string;
  /** Signs bytes with the peer homeserver's key. */
  readonly signAsPeer: (data: Uint8Array) => Uint8Array;
  /** Seconds since the epoch when the world was made, for tokens' issued_at. */
  readonly nowSeconds: bigint;
}

export const utf8 = (s: string) => new TextEncoder().encode(s);
export const concat = (parts: readonly (Uint8Array | readonly number[])[]) => {
  const arrays = parts.map((p) => (p instanceof Uint8Array ? p : Uint8Array.from(p)));
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
};
export const weighted = <T>(...pairs: [number, fc.Arbitrary<T>][]) =>
  fc.oneof(...pairs.map(([weight, arbitrary]) => ({ weight, arbitrary })));

// ---------------------------------------------------------------- strings

const anyString = weighted<string>(
  [4, fc.string({ maxLength: 40 })],
  [2, fc.string({ unit: "grapheme", maxLength: 12 })],
  [2, fc.string({ unit: "binary", maxLength: 12 })],
  [2, fc.constantFrom("", " ", "\0", "a\0b", "\u202e", "\ud800", "\uffff", "💥", "\r\n", "%00")],
  [1, fc.string({ minLength: 100, maxLength: 600 })],
);

/** Values for a string field, by the field's name: real ones where the world has them. */
function stringFor(field: DescField, world: FuzzWorld): fc.Arbitrary<string> {
  switch (field.name) {
    case "auth_id":
      return weighted<string>(
        [6, fc.constantFrom(...world.authIds)],
        [1, fc.constantFrom(...world.authIds).map((id) => `${id}\0`)],
        [1, fc.base64String({ minLength: 32, maxLength: 32 })],
        [2, anyString],
      );
    case "server_id":
      return weighted<string>(
        [3, fc.constantFrom(world.peerServerId, world.ownServerId)],
        [1, fc.constantFrom(`http://${world.peerServerId}`, `http://${world.peerServerId}/`)],
        [1, fc.tuple(fc.domain(), fc.integer({ min: 0, max: 70000 })).map(([d, p]) => `${d}:${p}`)],
        [2, anyString],
      );
    case "choice":
      return weighted<string>(
        [4, fc.constantFrom("login", "register", "other-options")],
        [1, fc.constantFrom("", "LOGIN", "login\0", " login")],
        [1, anyString],
      );
    case "string":
      return weighted<string>(
        [2, fc.emailAddress()],
        [2, fc.stringMatching(/^[a-z][a-z0-9_.-]{1,31}$/)],
        [1, fc.string({ minLength: 8, maxLength: 40 })],
        [2, anyString],
      );
    case "username":
      return weighted<string>([2, fc.stringMatching(/^[a-z][a-z0-9]{1,20}$/)], [1, anyString]);
    default:
      return anyString;
  }
}

function bytesFor(field: DescField): fc.Arbitrary<Uint8Array> {
  switch (field.name) {
    case "bytes": // a password
      return weighted<Uint8Array>(
        [3, fc.string({ minLength: 8, maxLength: 40 }).map(utf8)],
        [1, fc.uint8Array({ maxLength: 40 })],
      );
    case "sig":
      return weighted<Uint8Array>(
        [2, fc.uint8Array({ minLength: 64, maxLength: 64 })],
        [1, fc.uint8Array({ maxLength: 80 })],
      );
    default:
      return fc.uint8Array({ maxLength: 48 });
  }
}

// ---------------------------------------------------------------- messages

type Init = Record<string, unknown>;

function scalarFor(field: DescField, scalar: ScalarType, world: FuzzWorld): fc.Arbitrary<unknown> {
  switch (scalar) {
    case ScalarType.STRING:
      return stringFor(field, world);
    case ScalarType.BYTES:
      return bytesFor(field);
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return fc.integer();
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return fc.integer({ min: 0, max: 0xffffffff });
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      if (field.name === "issued_at") {
        const now = world.nowSeconds;
        return fc.constantFrom(now, now - 10n, 0n, now - 100_000n, now + 100_000n, 2n ** 64n - 1n);
      }
      return weighted<bigint>(
        [3, fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })],
        [1, fc.constantFrom(0n, 1n)],
      );
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE:
      return fc.double();
  }
}

function valueFor(field: DescField, world: FuzzWorld, depth: number): fc.Arbitrary<unknown> {
  switch (field.fieldKind) {
    case "scalar":
      return scalarFor(field, field.scalar, world);
    case "enum":
      return weighted<number>(
        [3, fc.constantFrom(...field.enum.values.map((v) => v.number))],
        [1, fc.integer()],
      );
    case "message":
      return messageInit(field.message, world, depth + 1);
    case "list": {
      const element =
        field.listKind === "message"
          ? messageInit(field.message, world, depth + 1)
          : field.listKind === "enum"
            ? fc.integer()
            : scalarFor(field, field.scalar, world);
      return fc.array(element, { maxLength: 4 });
    }
    case "map":
      throw new Error(`maps are not generated (${field.toString()})`);
  }
}

/** A peer-signed Token over TokenData that may or may not be acceptable. */
function signedToken(world: FuzzWorld): fc.Arbitrary<Init> {
  return fc
    .oneof(
      messageInit(TokenDataSchema, world, 1).map((init) =>
        toBinary(TokenDataSchema, create(TokenDataSchema, init)),
      ),
      fc
        .record({
          userId: fc.bigInt({ min: 1n, max: 2n ** 63n }),
          username: fc.stringMatching(/^[a-z][a-z0-9]{1,20}$/),
          nonce: fc.uint8Array({ minLength: 16, maxLength: 16 }),
        })
        .map((t) =>
          toBinary(
            TokenDataSchema,
            create(TokenDataSchema, {
              ...t,
              serverId: world.ownServerId,
              issuedAt: world.nowSeconds,
            }),
          ),
        ),
    )
    .map((data) => ({ sig: world.signAsPeer(data), data }));
}

/** A message's init, field by field from its descriptor (oneofs pick one case or none). */
export function messageInit(desc: DescMessage, world: FuzzWorld, depth = 0): fc.Arbitrary<Init> {
  if (depth > 3) return fc.constant({});
  const generic = (): fc.Arbitrary<Init> => {
    const parts = desc.members.map((member): fc.Arbitrary<[string, unknown] | null> => {
      if (member.kind === "oneof") {
        const cases = member.fields.map((f) =>
          valueFor(f, world, depth).map((value) => ({ case: f.localName, value })),
        );
        return fc.option(
          fc.oneof(...cases).map((v): [string, unknown] => [member.localName, v]),
          { freq: 4 },
        );
      }
      return fc.option(
        valueFor(member, world, depth).map((v): [string, unknown] => [member.localName, v]),
        { freq: 5 },
      );
    });
    if (parts.length === 0) return fc.constant({});
    return fc
      .tuple(...parts)
      .map((entries) =>
        Object.fromEntries(entries.filter((e): e is [string, unknown] => e !== null)),
      );
  };
  if (desc.typeName === "protocol.harmonytypes.v1.Token") {
    return weighted<Init>([2, signedToken(world)], [1, generic()]);
  }
  return generic();
}

export const validBinary = (desc: DescMessage, world: FuzzWorld) =>
  messageInit(desc, world).map((init) => toBinary(desc, create(desc, init)));

export const validJson = (desc: DescMessage, world: FuzzWorld) =>
  fc
    .tuple(messageInit(desc, world), fc.boolean())
    .map(([init, useProtoFieldName]) =>
      toJsonString(desc, create(desc, init), { useProtoFieldName }),
    );

// ---------------------------------------------------------------- mutations and garbage

const mutation = fc.oneof(
  fc.record({ op: fc.constant("flip" as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ op: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({
    op: fc.constant("extend" as const),
    extra: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ op: fc.constant("insert" as const), at: fc.nat(), byte: fc.nat(255) }),
  fc.record({ op: fc.constant("duplicate" as const) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function applyMutation(bytes: Uint8Array, m: Mutation): Uint8Array {
  switch (m.op) {
    case "flip": {
      if (bytes.length === 0) return bytes;
      const out = Uint8Array.from(bytes);
      const i = m.at % out.length;
      out[i] = (out[i] ?? 0) ^ (1 << m.bit);
      return out;
    }
    case "truncate":
      return bytes.subarray(0, m.at % (bytes.length + 1));
    case "extend":
      return concat([bytes, m.extra]);
    case "insert": {
      const i = m.at % (bytes.length + 1);
      return concat([bytes.subarray(0, i), [m.byte], bytes.subarray(i)]);
    }
    case "duplicate":
      return concat([bytes, bytes]);
  }
}

/** Bit flips, truncation, extension of valid bytes. */
const mutated = (valid: fc.Arbitrary<Uint8Array>) =>
  fc
    .tuple(valid, fc.array(mutation, { minLength: 1, maxLength: 3 }))
    .map(([bytes, ms]) => ms.reduce(applyMutation, bytes));

function varint(value: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, value);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) b |= 0x80;
    out.push(b);
  } while (v !== 0n);
  return out;
}
const tag = (field: number, wire: number) => varint((BigInt(field) << 3n) | BigInt(wire));

/** One field with a random number and wire type, its payload as that type says (or not). */
const randomField = fc
  .record({
    field: weighted<number>(
      [3, fc.integer({ min: 0, max: 8 })],
      [1, fc.integer({ min: 0, max: 2 ** 29 - 1 })],
    ),
    wire: fc.integer({ min: 0, max: 7 }),
    value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    payload: fc.uint8Array({ maxLength: 24 }),
    lie: fc.option(fc.oneof(fc.nat(64), fc.constant(2 ** 31), fc.constant(2 ** 32 - 1)), {
      freq: 3,
    }),
  })
  .map(({ field, wire, value, payload, lie }) => {
    const t = tag(field, wire);
    switch (wire) {
      case 0:
        return concat([t, varint(value)]);
      case 1:
        return concat([t, payload.subarray(0, 8)]);
      case 2:
        return concat([t, varint(BigInt(lie ?? payload.length)), payload]);
      case 5:
        return concat([t, payload.subarray(0, 4)]);
      default: // groups (3, 4) and the wire types that do not exist (6, 7)
        return concat([t, payload.subarray(0, lie === null ? 0 : 3)]);
    }
  });

/** The (nested) field numbers that lead to each string field of a message. */
function stringPaths(desc: DescMessage, depth = 0): number[][] {
  const out: number[][] = [];
  for (const f of desc.fields) {
    if (f.scalar === ScalarType.STRING) out.push([f.number]);
    if (f.message && depth < 3) {
      for (const p of stringPaths(f.message, depth + 1)) out.push([f.number, ...p]);
    }
  }
  return out;
}

const invalidUtf8 = fc.constantFrom(
  [0xc3, 0x28], // a lead byte without its continuation
  [0xff],
  [0xed, 0xa0, 0x80], // a UTF-16 surrogate
  [0xc0, 0x80], // an overlong NUL
  [0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
  [0xe2, 0x82], // truncated
);

function lengthDelimited(field: number, inner: Uint8Array): Uint8Array {
  return concat([tag(field, 2), varint(BigInt(inner.length)), inner]);
}

/** Bytes that look like protobuf but are not a valid message of `desc`. */
function protobufGarbage(desc: DescMessage, readMaxBytes: number): fc.Arbitrary<Uint8Array> {
  const paths = stringPaths(desc);
  const utf8Case =
    paths.length === 0
      ? fc.tuple(invalidUtf8).map(([bad]) => lengthDelimited(1, Uint8Array.from(bad)))
      : fc
          .tuple(fc.constantFrom(...paths), invalidUtf8, fc.string({ maxLength: 6 }))
          .map(([path, bad, prefix]) => {
            let bytes: Uint8Array = concat([utf8(prefix), bad]);
            for (const field of [...path].reverse()) bytes = lengthDelimited(field, bytes);
            return bytes;
          });
  const wrongWire = fc
    .tuple(
      fc.constantFrom(...(desc.fields.length ? desc.fields.map((f) => f.number) : [1])),
      fc.integer({ min: 0, max: 5 }),
      fc.uint8Array({ maxLength: 8 }),
    )
    .map(([field, wire, payload]) => concat([tag(field, wire), payload]));
  // Nesting grows each level by two or three bytes; stay under the size limit.
  const maxDepth = Math.floor(readMaxBytes / 3.5);
  return weighted<Uint8Array>(
    [4, fc.array(randomField, { minLength: 1, maxLength: 8 }).map(concat)],
    [
      2,
      fc
        .tuple(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 10, max: 40 }), fc.boolean())
        .map(([field, n, asTag]) =>
          asTag
            ? concat([new Array(n).fill(0xff), [0x01]])
            : concat([tag(field, 0), new Array(n).fill(0xff), [0x01]]),
        ),
    ],
    [
      2,
      fc
        .tuple(fc.integer({ min: 1, max: maxDepth }), fc.uint8Array({ maxLength: 8 }))
        .map(([depth, inner]) => {
          let bytes: Uint8Array = inner;
          for (let i = 0; i < depth; i++) bytes = lengthDelimited(1, bytes);
          return bytes;
        }),
    ],
    [
      1,
      fc
        .tuple(
          fc.integer({ min: 1, max: Math.floor(readMaxBytes / 2) }),
          fc.boolean(),
          fc.integer({ min: 1, max: 3 }),
        )
        .map(([depth, closed, field]) =>
          concat([
            new Array(depth).fill(tag(field, 3)[0]),
            closed ? new Array(depth).fill(tag(field, 4)[0]) : [],
          ]),
        ),
    ],
    [3, utf8Case],
    [2, wrongWire],
  );
}

/** Bodies for a binary protobuf request of `desc`. */
export function binaryBody(desc: DescMessage, world: FuzzWorld): fc.Arbitrary<Uint8Array> {
  return weighted<Uint8Array>(
    [5, validBinary(desc, world)],
    [3, mutated(validBinary(desc, world))],
    [2, fc.uint8Array({ maxLength: 256 })],
    [4, protobufGarbage(desc, world.readMaxBytes)],
    [
      1,
      fc
        .integer({ min: world.readMaxBytes + 1, max: world.readMaxBytes * 2 })
        .map((n) => lengthDelimited(1, new Uint8Array(n).fill(0x78))),
    ],
  );
}

const wrongJsonValue = fc.constantFrom(
  "12",
  "-1",
  "1.5",
  "1e999",
  "-0",
  "true",
  "null",
  "[]",
  "[1,2]",
  "{}",
  '{"a":1}',
  '"x"',
  '""',
  '"\\u0000"',
  '"\\ud800"',
  '"!!not base64"',
  '"99999999999999999999999"',
  '"-1"',
  '"0x10"',
  "9007199254740993",
  '"NaN"',
  '"Infinity"',
  `${"[".repeat(200)}${"]".repeat(200)}`,
  `"${"x".repeat(300)}"`,
);

/** Every place in a parsed JSON value: a key path, ending where a value may go. */
function jsonPaths(
  value: unknown,
  path: (string | number)[] = [],
  out: (string | number)[][] = [],
) {
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      out.push([...path, i]);
      jsonPaths(v, [...path, i], out);
    });
  } else if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      out.push([...path, k]);
      jsonPaths(v, [...path, k], out);
    }
  }
  return out;
}

/** Valid JSON of the message with one value (or one new key) of the wrong type. */
function jsonWrongTypes(desc: DescMessage, world: FuzzWorld): fc.Arbitrary<string> {
  const keys = desc.fields.flatMap((f) => [f.jsonName, f.name]);
  return fc
    .tuple(
      validJson(desc, world),
      fc.nat(),
      wrongJsonValue,
      fc.option(fc.constantFrom(...keys, "x", "@type"), { freq: 2 }),
    )
    .map(([json, pick, wrong, newKey]) => {
      const parsed = JSON.parse(json) as Record<string, unknown>;
      const marker = "@@wrong@@";
      if (newKey !== null) {
        parsed[newKey] = marker;
      } else {
        const paths = jsonPaths(parsed);
        const path = paths[pick % Math.max(paths.length, 1)];
        if (!path) parsed[keys[pick % Math.max(keys.length, 1)] ?? "authId"] = marker;
        else {
          let node = parsed as Record<string | number, unknown>;
          for (const step of path.slice(0, -1))
            node = node[step] as Record<string | number, unknown>;
          node[path.at(-1) as string | number] = marker;
        }
      }
      return JSON.stringify(parsed).replace(`"${marker}"`, wrong);
    });
}

const jsonGarbage = (desc: DescMessage, world: FuzzWorld) =>
  weighted<string>(
    [2, fc.string({ maxLength: 60 })],
    [2, fc.json({ maxDepth: 3 })],
    [
      2,
      fc.tuple(validJson(desc, world), fc.nat()).map(([j, at]) => j.slice(0, at % (j.length + 1))),
    ],
    [1, fc.integer({ min: 1, max: 1500 }).map((n) => "[".repeat(n))],
    [1, fc.integer({ min: 1, max: 300 }).map((n) => '{"authId":'.repeat(n))],
    [1, validJson(desc, world).map((j) => `\ufeff${j}`)],
    [1, fc.tuple(validJson(desc, world), fc.string({ maxLength: 8 })).map(([j, s]) => `${j}${s}`)],
    [1, fc.constant('{"authId":"a","authId":1}')],
    [1, fc.constantFrom("", " ", "null", "0", '"x"', "[]", "{", "}", "{}}")],
  );

/** Bodies for a Connect JSON request of `desc`. */
export function jsonBody(desc: DescMessage, world: FuzzWorld): fc.Arbitrary<Uint8Array> {
  return weighted<Uint8Array>(
    [5, validJson(desc, world).map(utf8)],
    [3, jsonWrongTypes(desc, world).map(utf8)],
    [3, jsonGarbage(desc, world).map(utf8)],
    [2, mutated(validJson(desc, world).map(utf8))],
    [1, fc.uint8Array({ maxLength: 128 })],
    [
      1,
      fc
        .integer({ min: world.readMaxBytes, max: world.readMaxBytes * 2 })
        .map((n) => utf8(`{"authId":"${"x".repeat(n)}"}`)),
    ],
  );
}

// ---------------------------------------------------------------- envelopes

const frameFlags = weighted<number>(
  [10, fc.constant(0)],
  [2, fc.constantFrom(0x01, 0x02, 0x80, 0x81, 0xff)],
  [1, fc.nat(255)],
);

export const u32 = (n: number) => [
  (n >>> 24) & 0xff,
  (n >>> 16) & 0xff,
  (n >>> 8) & 0xff,
  n & 0xff,
];

/** One frame: flags, payload, and a length that tells the truth or does not. */
function frameOf(payload: fc.Arbitrary<Uint8Array>, readMaxBytes: number) {
  return fc
    .record({
      flags: frameFlags,
      payload,
      length: weighted<"honest" | number>(
        [8, fc.constant("honest" as const)],
        [1, fc.constantFrom(0, 1, readMaxBytes + 1, 2 ** 31, 2 ** 32 - 1)],
        [1, fc.nat(600)],
      ),
    })
    .map(({ flags, payload, length }) => {
      const head = new Uint8Array(5);
      head[0] = flags;
      new DataView(head.buffer).setUint32(1, length === "honest" ? payload.length : length);
      return concat([head, payload]);
    });
}

/** A framed body: one honest frame mostly, or several, none, or a broken header. */
export function envelopes(payload: fc.Arbitrary<Uint8Array>, readMaxBytes: number) {
  return weighted<Uint8Array>(
    [6, payload.map((p) => concat([[0, ...u32(p.length)], p]))],
    [3, fc.array(frameOf(payload, readMaxBytes), { maxLength: 3 }).map(concat)],
    [1, fc.uint8Array({ maxLength: 4 })],
  );
}
