import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "vitest";
import { HarmonyError } from "../../src/errors.js";
import { ErrorSchema } from "../../src/gen/hrpc/v1/hrpc_pb.js";

/** The code, Harmony identifier and message an RPC failed with. */
export async function rpcError(
  call: Promise<unknown> | (() => Promise<unknown>),
): Promise<{ code: Code; codeName: string; identifier: string | undefined; message: string }> {
  try {
    await (typeof call === "function" ? call() : call);
  } catch (err) {
    // Domain calls throw HarmonyErrors; RPCs, ConnectErrors carrying their detail.
    if (err instanceof HarmonyError) {
      return {
        code: err.code,
        codeName: Code[err.code],
        identifier: err.identifier,
        message: err.message,
      };
    }
    const e = ConnectError.from(err);
    return {
      code: e.code,
      codeName: Code[e.code],
      identifier: e.findDetails(ErrorSchema)[0]?.identifier,
      message: e.rawMessage,
    };
  }
  throw new Error("expected the call to fail");
}

/** Asserts an RPC fails with exactly this code and identifier. */
export async function expectRpcError(
  call: Promise<unknown> | (() => Promise<unknown>),
  code: Code,
  identifier: string,
): Promise<string> {
  const error = await rpcError(call);
  expect({ code: error.codeName, identifier: error.identifier }).toEqual({
    code: Code[code],
    identifier,
  });
  return error.message;
}
