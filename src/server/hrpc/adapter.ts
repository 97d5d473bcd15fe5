import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerResponse } from "node:http2";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { Caller } from "../../caller.js";
import { hrpcErrors } from "../../errors.js";
import type { StreamSlots } from "../../limits/admission.js";
import { failureFor, recordFailure } from "../rpc/failure.js";
import type { RpcMethod } from "../rpc/router.js";
import { hrpcErrorResponse } from "./errors.js";
import { claimsUnary, type NodeRequest, pathOf } from "./routing.js";
import { createHrpcStreams, type HrpcStreamOptions } from "./stream.js";
import { serveUnary } from "./unary.js";

/**
 * hRPC v1 (PROTOCOL.md §7) as a thin adapter over the same RPC methods that
 * serve Connect: an hRPC unary call is handed to the method as a Connect
 * binary call (the bodies are the same bytes), a WebSocket stream as a
 * Connect server-stream, so every hRPC call runs through the same boundary,
 * interceptors, handlers and error table; nothing is implemented twice.
 * (StreamSteps runs on the direct path instead, under the same rules:
 * rpc/direct-stream.ts.)
 */
export interface HrpcAdapter {
  /** Whether a request is for hRPC's unary transport. */
  claims(req: NodeRequest): boolean;
  serveUnary(req: NodeRequest, res: ServerResponse | Http2ServerResponse): Promise<void>;
  serveUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Answers a request it claims, without serving it, as a malformed hRPC request. */
  refuse(req: NodeRequest, res: ServerResponse | Http2ServerResponse, message: string): void;
  /** Ends streams still waiting for their request. */
  close(): void;
}

export type HrpcAdapterDeps = {
  readonly methods: ReadonlyMap<string, RpcMethod>;
  readonly callerOf: (req: NodeRequest) => Caller;
  readonly streams: Pick<StreamSlots, "acquire">;
  readonly logger: Logger;
  readonly readMaxBytes: number;
  /** How long a WebSocket may take to send its request (default 10 s). */
  readonly firstMessageTimeoutMs?: number;
  /** How often open streams are pinged (default 30 s). */
  readonly pingIntervalMs?: number;
  /** Methods whose streams run on the direct path rather than through their Connect handler. */
  readonly direct?: HrpcStreamOptions["direct"];
};

export function createHrpcAdapter({
  methods,
  callerOf,
  streams: slots,
  logger,
  readMaxBytes,
  firstMessageTimeoutMs = 10_000,
  pingIntervalMs = 30_000,
  direct,
}: HrpcAdapterDeps): HrpcAdapter {
  const streams = createHrpcStreams({
    methods,
    callerOf,
    streams: slots,
    logger,
    readMaxBytes,
    firstMessageTimeoutMs,
    pingIntervalMs,
    ...(direct ? { direct } : {}),
  });
  return {
    claims: (req) => claimsUnary(req, (path) => methods.has(path)),
    async serveUnary(req, res) {
      try {
        await serveUnary(methods, logger, callerOf(req), req, res);
      } catch (err) {
        const failure = recordFailure(
          logger,
          undefined,
          failureFor(hrpcErrors.internal, undefined, { cause: err }),
          pathOf(req.url).slice(1, 200),
        );
        if (res.headersSent) res.end();
        else {
          const { status, headers, body } = hrpcErrorResponse(failure);
          res.writeHead(status, headers);
          res.end(body);
        }
      }
    },
    serveUpgrade: (req, socket, head) => streams.upgrade(req, socket, head),
    refuse(req, res, message) {
      const failure = recordFailure(
        logger,
        undefined,
        failureFor(hrpcErrors.badUnaryRequest, message),
        pathOf(req.url).slice(1, 200),
      );
      const { status, headers, body } = hrpcErrorResponse(failure);
      res.writeHead(status, headers);
      res.end(body);
    },
    close: () => streams.close(),
  };
}
