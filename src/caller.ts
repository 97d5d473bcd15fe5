import { createContextKey } from "@connectrpc/connect";

/** Who is on the other end of a call, as far as the server can tell. */
export interface Caller {
  /**
   * The client's IP address: the TCP peer, or, behind a proxy in
   * TRUSTED_PROXIES, the address it forwarded. "unknown" in process.
   */
  readonly address: string;
  /** The User-Agent header, at most 256 characters, if any. */
  readonly userAgent: string | undefined;
}

export const unknownCaller: Caller = Object.freeze({ address: "unknown", userAgent: undefined });

/** The caller of an RPC, put in the context where the request entered. */
export const callerKey = createContextKey<Caller>(unknownCaller, { description: "caller" });

/** Set by hRPC on a stream whose WebSocket already holds one of the caller's stream slots. */
export const streamSlotHeldKey = createContextKey<boolean>(false, {
  description: "stream slot held",
});
