import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  AuthStepSchema,
  NextStepRequestSchema,
  SessionSchema,
} from "../src/gen/protocol/auth/v1/auth_pb.js";

// Each fixture was written by hand from the field table in PROTOCOL.md §2
// (tag = field number << 3 | wire type), not produced by the code under test.
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");

describe("wire format of protocol.auth.v1", () => {
  it("NextStepRequest with a form of a string and a bytes field", () => {
    const msg = create(NextStepRequestSchema, {
      authId: "a",
      step: {
        case: "form",
        value: {
          fields: [
            { field: { case: "string", value: "x@y.z" } },
            { field: { case: "bytes", value: new TextEncoder().encode("pw") } },
          ],
        },
      },
    });
    const expected = hex(
      [
        "0a 01 61", // auth_id = 1 (LEN) "a"
        "1a 0f", // form = 3 (LEN), 15 bytes
        "0a 07", // fields = 1 (LEN), 7 bytes
        "12 05 78 40 79 2e 7a", // string = 2 (LEN) "x@y.z"
        "0a 04", // fields = 1 (LEN), 4 bytes
        "0a 02 70 77", // bytes = 1 (LEN) "pw"
      ].join(""),
    );
    expect(Buffer.from(toBinary(NextStepRequestSchema, msg))).toEqual(expected);
    expect(equals(NextStepRequestSchema, fromBinary(NextStepRequestSchema, expected), msg)).toBe(
      true,
    );
  });

  it("AuthStep with a form", () => {
    const msg = create(AuthStepSchema, {
      canGoBack: true,
      step: {
        case: "form",
        value: { title: "login", fields: [{ name: "email", type: "email" }] },
      },
    });
    const expected = hex(
      [
        "10 01", // can_go_back = 2 (VARINT) true
        "22 17", // form = 4 (LEN), 23 bytes
        "0a 05 6c 6f 67 69 6e", // title = 1 "login"
        "12 0e", // fields = 2 (LEN), 14 bytes
        "0a 05 65 6d 61 69 6c", // name = 1 "email"
        "12 05 65 6d 61 69 6c", // type = 2 "email"
      ].join(""),
    );
    expect(Buffer.from(toBinary(AuthStepSchema, msg))).toEqual(expected);
    expect(equals(AuthStepSchema, fromBinary(AuthStepSchema, expected), msg)).toBe(true);
  });

  it("AuthStep with a choice", () => {
    const msg = create(AuthStepSchema, {
      step: { case: "choice", value: { title: "initial", options: ["login"] } },
    });
    const expected = hex(
      [
        "1a 10", // choice = 3 (LEN), 16 bytes
        "0a 07 69 6e 69 74 69 61 6c", // title = 1 "initial"
        "12 05 6c 6f 67 69 6e", // options = 2 "login"
      ].join(""),
    );
    expect(Buffer.from(toBinary(AuthStepSchema, msg))).toEqual(expected);
  });

  it("Session whose user_id is above 2^63", () => {
    const userId = 2n ** 63n + 1n;
    const msg = create(SessionSchema, { userId, sessionToken: "t" });
    const expected = hex(
      [
        "08", // user_id = 1 (VARINT)
        "81 80 80 80 80 80 80 80 80 01", // 2^63 + 1 in ten 7-bit groups, low first
        "12 01 74", // session_token = 2 "t"
      ].join(""),
    );
    expect(Buffer.from(toBinary(SessionSchema, msg))).toEqual(expected);
    expect(fromBinary(SessionSchema, expected).userId).toBe(userId);
  });

  it("a Session inside an AuthStep is field 5", () => {
    const msg = create(AuthStepSchema, {
      step: { case: "session", value: { userId: 1n, sessionToken: "" } },
    });
    expect(Buffer.from(toBinary(AuthStepSchema, msg))).toEqual(hex("2a 02 08 01"));
  });
});
