import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { LookupFunction } from "node:net";
import { fromBinary } from "@bufbuild/protobuf";
import { ErrorSchema } from "../gen/hrpc/v1/hrpc_pb.js";
import { KeyResponseSchema } from "../gen/protocol/auth/v1/auth_pb.js";

/** A Key response is a few dozen bytes; anything much larger is refused. */
const MAX_RESPONSE_BYTES = 1024;

/**
 * Calls a homeserver's Key RPC over hRPC unary (PROTOCOL.md §7): a POST of
 * the empty KeyRequest with Content-Type application/hrpc. hRPC is the one
 * protocol every Harmony homeserver serves (scherzo speaks nothing else,
 * cadenza speaks it as well as Connect), so no detection or fallback is needed.
 * Redirects are not followed; the response is capped; `lookup` pins the
 * connection to a vetted address. Throws an Error saying what went wrong.
 */
export async function fetchKeyOverHrpc(
  baseUrl: string,
  options: { lookup: LookupFunction | undefined; timeoutMs: number },
): Promise<Uint8Array> {
  const url = new URL("/protocol.auth.v1.AuthService/Key", baseUrl);
  const request = url.protocol === "https:" ? httpsRequest : httpRequest;
  const response = await new Promise<{ res: IncomingMessage; body: Buffer }>((resolve, reject) => {
    const req = request(
      url,
      {
        method: "POST",
        headers: {
          "content-type": "application/hrpc",
          accept: "application/hrpc",
          "content-length": 0,
        },
        signal: AbortSignal.timeout(options.timeoutMs),
        ...(options.lookup ? { lookup: options.lookup } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            reject(new Error(`the response is larger than ${MAX_RESPONSE_BYTES} bytes`));
            req.destroy();
            return;
          }
          chunks.push(chunk);
        });
        res.on("end", () => resolve({ res, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.on("error", (err) =>
      reject(
        err.name === "AbortError" ? new Error(`no answer within ${options.timeoutMs} ms`) : err,
      ),
    );
    req.end();
  });

  const { res, body } = response;
  const status = res.statusCode ?? 0;
  if (status >= 300 && status < 400)
    throw new Error(`it redirects (HTTP ${status}); redirects are not followed`);
  if (status !== 200) {
    let detail = "";
    try {
      const error = fromBinary(ErrorSchema, body);
      detail = error.identifier ? `: ${error.identifier} ${error.humanMessage}` : "";
    } catch {
      // not an hRPC error body
    }
    throw new Error(`HTTP ${status}${detail}`);
  }
  if (!(res.headers["content-type"] ?? "").startsWith("application/hrpc")) {
    throw new Error(
      `it answered with Content-Type ${res.headers["content-type"] ?? "(none)"}, not application/hrpc`,
    );
  }
  try {
    return fromBinary(KeyResponseSchema, body).key;
  } catch (err) {
    throw new Error(`its KeyResponse does not decode: ${(err as Error).message}`);
  }
}
