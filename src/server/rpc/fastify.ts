import type { ServerResponse } from "node:http";
import { createContextValues } from "@connectrpc/connect";
import type { UniversalServerResponse } from "@connectrpc/connect/protocol";
import {
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import type { Logger } from "pino";
import { type Caller, callerKey } from "../../caller.js";
import type { DirectHttp } from "./direct-http.js";
import { type CallRecord, callRecordKey, newCall } from "./failure.js";
import type { RpcMethod, RpcRouter } from "./router.js";

/**
 * Hosts the RPC router on Fastify: one route per method path, and the answer
 * for every other path, with answers written straight to Node's response
 * (Connect streams must not pass through Fastify's serialisation).
 *
 * Both are served from `onRequest`, before Fastify looks at the request's
 * Content-Type (it answers a malformed one with its own 415) or parses the
 * body (its JSON parser answers its own 400): the router admits every
 * request itself, so each is answered in its protocol's terms.
 */
export function rpcRoutes(
  router: RpcRouter,
  logger: Logger,
  callerFor: (req: FastifyRequest["raw"]) => Caller,
  direct?: DirectHttp,
): FastifyPluginAsync {
  return async (app) => {
    // In this plugin's scope only: no body is parsed, not even for a 404.
    app.removeAllContentTypeParsers();
    app.addContentTypeParser("*", (_req, _payload, done) => done(null));
    // Runs for this plugin's routes and for its not-found handler.
    app.addHook("onRequest", async (request, reply) => {
      const method = request.is404 ? undefined : router.methods.get(request.routeOptions.url ?? "");
      if (method && direct?.serves(method)) await serveDirect(direct, method, request, reply);
      else if (method) await serve(method, request, reply, logger, callerFor);
      else await answerUnknownMethod(router, request, reply, logger);
    });
    /**
     * A streaming call on the direct path (direct-http.ts), which falls back
     * to `serve` for a request it does not take. The hook resolves once the
     * call has started: no promise waits on the stream while it is open.
     */
    const serveDirect = async (
      direct: DirectHttp,
      method: RpcMethod,
      request: FastifyRequest,
      reply: FastifyReply,
    ): Promise<void> => {
      reply.hijack();
      copyReplyHeaders(reply);
      await direct.serve(
        method,
        request.raw,
        reply.raw,
        callerFor(request.raw),
        (body, call) => serve(method, request, reply, logger, callerFor, { body, call }),
        (res) => write(res, reply, logger),
      );
    };
    for (const method of router.methods.values()) app.all(method.requestPath, servedOnRequest);
    app.setNotFoundHandler(async (request, reply) =>
      reply.code(404).send({ error: "not found", path: request.url.split("?", 1)[0] }),
    );
  };
}

/** A route handler never reached: the onRequest hook has hijacked the reply. */
async function servedOnRequest(): Promise<never> {
  throw new Error("RPC requests are served from onRequest");
}

/** Writes a router's answer for a path that is no method, or returns false when it has none. */
export async function answerUnknownMethod(
  router: RpcRouter,
  request: FastifyRequest,
  reply: FastifyReply,
  logger: Logger,
): Promise<boolean> {
  const res = router.unknownMethod(
    request.url.split("?", 1)[0] ?? "/",
    request.headers["content-type"] ?? "",
  );
  if (!res) return false;
  reply.hijack();
  await write(res, reply, logger);
  return true;
}

function contextFor(caller: Caller, call: CallRecord = newCall(undefined, caller.address)) {
  return createContextValues().set(callerKey, caller).set(callRecordKey, call);
}

/**
 * Serves a request through the method's Connect handlers; `given` is the
 * body and call record when the direct path has read the body already.
 */
async function serve(
  method: RpcMethod,
  request: FastifyRequest,
  reply: FastifyReply,
  logger: Logger,
  callerFor: (req: FastifyRequest["raw"]) => Caller,
  given?: { body: AsyncIterable<Uint8Array>; call: CallRecord },
): Promise<void> {
  reply.hijack();
  let uReq: ReturnType<typeof universalRequestFromNodeRequest>;
  try {
    uReq = universalRequestFromNodeRequest(
      request.raw,
      reply.raw,
      undefined,
      contextFor(callerFor(request.raw), given?.call),
    );
    if (given) uReq = { ...uReq, body: given.body };
  } catch {
    // The URL cannot be formed from the Host header (or :authority).
    const host = String(request.headers.host ?? request.headers[":authority"] ?? "");
    const message = `the Host header (${JSON.stringify(host.slice(0, 100))}) is not a valid host`;
    await write(method.refuse(request.headers["content-type"] ?? "", message), reply, logger);
    return;
  }
  await write(await method.serve(uReq), reply, logger);
}

/** Headers set by earlier hooks (CORS) live on the reply, not the raw response. */
function copyReplyHeaders(reply: FastifyReply): void {
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value !== undefined) reply.raw.setHeader(name, value);
  }
}

async function write(res: UniversalServerResponse, reply: FastifyReply, logger: Logger) {
  copyReplyHeaders(reply);
  try {
    await universalResponseToNodeResponse(res, reply.raw as ServerResponse);
  } catch (err) {
    // The client went away mid-answer: normal for a stream it closed.
    logger.debug({ err }, "answer not delivered: the connection closed");
  }
}
