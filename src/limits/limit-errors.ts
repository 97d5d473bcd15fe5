import { Code } from "@connectrpc/connect";
import type { ErrorSpec } from "../errors.js";

/**
 * Every limit answers with Harmony's rate-limit identifier (PROTOCOL.md §5),
 * HTTP 429 over hRPC, and the wait in `Retry-After` and a RetryInfo detail.
 */
const exhausted = (message: string): ErrorSpec => ({
  identifier: "hrpc.resource-exhausted",
  code: Code.ResourceExhausted,
  message,
  hrpcStatus: 429,
});

export const limitErrors = {
  loginDelayed: exhausted(
    "too many failed logins for this account: wait before trying again (no password was checked)",
  ),
  tooManyRequests: exhausted("too many requests from your address: wait before trying again"),
  tooManyFlows: exhausted(
    "too many unfinished auth flows from your address: finish one or wait for them to expire",
  ),
  tooManyStreams: exhausted("too many open streams from your address: close one first"),
  serverBusy: exhausted("the server is busy: try again in a moment"),
} as const satisfies Record<string, ErrorSpec>;
