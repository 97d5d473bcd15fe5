import { setMaxListeners } from "node:events";
import { createServer as createHttp1Server, type Server as Http1Server } from "node:http";
import { type ConnectRouter, cors as connectCors, type Interceptor } from "@connectrpc/connect";
import fastifyCors from "@fastify/cors";
import {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerFactoryHandler,
  fastify,
  LogController,
} from "fastify";
import type { AppContext } from "../app-context.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import { AuthService } from "../gen/protocol/auth/v1/auth_pb.js";
import { createAuthServiceImpl } from "./auth-service.js";
import { healthRoutes } from "./health.js";
import { createHrpcAdapter } from "./hrpc/adapter.js";
import { answerUnknownMethod, rpcRoutes } from "./rpc/fastify.js";
import { authInterceptor, errorInterceptor } from "./rpc/interceptors.js";
import { createRpcRouter, type RpcService } from "./rpc/router.js";

export interface BuiltApp {
  readonly app: Pick<FastifyInstance, "close">;
  /** Fastify's request handler, for the HTTP/2 server that shares it. */
  readonly handler: FastifyServerFactoryHandler;
  /** The HTTP/1.1 server Fastify runs on (never listening itself: see listener.ts). */
  readonly http1: Http1Server;
  /** Marks the server as draining: /readyz fails, open streams end with Unavailable. */
  beginShutdown(): void;
}

/** The services the public port serves. */
function publicServices(ctx: AppContext): RpcService[] {
  return [{ service: AuthService, impl: createAuthServiceImpl(ctx) }];
}

/** The interceptors every call runs through; the error boundary is outermost, so it sees the rest. */
function interceptors(ctx: AppContext): Interceptor[] {
  return [errorInterceptor(ctx.logger), authInterceptor(ctx.sessions)];
}

/**
 * The Connect services and interceptors, for tests that call them in memory
 * through `createRouterTransport`.
 */
export function connectRoutes(ctx: AppContext): {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
} {
  const services = publicServices(ctx);
  return {
    routes(router) {
      for (const { service, impl } of services) router.service(service, impl);
    },
    interceptors: interceptors(ctx),
  };
}

/**
 * The Fastify application: CORS, health checks, and the RPC router, which
 * serves Connect (JSON and binary), gRPC and gRPC-Web on the same paths, with
 * hRPC in front of it for Harmony's own clients.
 */
export async function buildApp(ctx: AppContext): Promise<BuiltApp> {
  const { config, logger } = ctx;
  let handler: FastifyServerFactoryHandler | undefined;
  let http1: Http1Server | undefined;
  const shutdown = new AbortController();
  // Every call in flight listens on it: many more than EventTarget's warning threshold.
  setMaxListeners(0, shutdown.signal);

  const router = createRpcRouter(publicServices(ctx), {
    logger,
    interceptors: interceptors(ctx),
    readMaxBytes: config.readMaxBytes,
    // No call outlives a flow: StreamSteps ends when its flow expires.
    maxTimeoutMs: config.flowTtlMs + 60_000,
    shutdownSignal: shutdown.signal,
  });

  // hRPC goes to the same methods: unary calls by content type, before
  // Fastify parses a body it does not know; streams by WebSocket upgrade.
  const hrpc = createHrpcAdapter({
    methods: router.methods,
    logger,
    readMaxBytes: config.readMaxBytes,
    firstMessageTimeoutMs: config.hrpcStreamRequestTimeoutMs,
  });
  /** Serves an hRPC unary call on a hijacked reply. */
  const serveHrpc = async (request: FastifyRequest, reply: FastifyReply) => {
    reply.hijack();
    // Headers set by earlier hooks (CORS) live on the reply, not the raw response.
    for (const [name, value] of Object.entries(reply.getHeaders())) {
      if (value !== undefined) reply.raw.setHeader(name, value);
    }
    await hrpc.serveUnary(request.raw, reply.raw);
  };

  const app = fastify({
    loggerInstance: logger,
    // A URL the router cannot decode reaches no hook and no route: it is an
    // unknown method too, answered in the protocol the request speaks.
    frameworkErrors: (error, request, reply) => {
      const answered = hrpc.claims(request.raw)
        ? serveHrpc(request, reply).then(() => true)
        : answerUnknownMethod(router, request, reply, logger);
      answered
        .then((done) => {
          // Fastify's own answer otherwise (its error serialised as JSON).
          if (!done) (reply as FastifyReply).code(error.statusCode ?? 400).send(error);
        })
        .catch((err: unknown) => logger.error({ err }, "answering a malformed URL failed"));
    },
    // Calls are logged by the RPC boundary, not once per request by Fastify.
    logController: new LogController({ disableRequestLogging: true }),
    serverFactory: (h) => {
      handler = h;
      http1 = createHttp1Server({ headersTimeout: 10_000, requestTimeout: 30_000 }, h);
      http1.keepAliveTimeout = 5_000;
      return http1;
    },
  });

  await app.register(fastifyCors, {
    // An exact list; an empty one allows no cross-origin callers.
    origin: config.corsOrigins.includes("*") ? true : [...config.corsOrigins],
    methods: [...connectCors.allowedMethods],
    allowedHeaders: [...connectCors.allowedHeaders, "Authorization"],
    exposedHeaders: [...connectCors.exposedHeaders, "hrpc-version", "retry-after"],
    maxAge: 7200,
  });

  await app.register(healthRoutes(ctx, shutdown.signal));

  app.addHook("onRequest", async (request, reply) => {
    if (!hrpc.claims(request.raw)) return;
    await serveHrpc(request, reply);
    return reply;
  });
  await app.register(rpcRoutes(router, logger));

  await app.ready();
  if (!handler || !http1) throw new Error("fastify did not call serverFactory");
  http1.on("upgrade", (req, socket, head) => hrpc.serveUpgrade(req, socket, head));
  return {
    app,
    handler,
    http1,
    beginShutdown() {
      shutdown.abort(new HarmonyError(hrpcErrors.unavailable));
      hrpc.close();
    },
  };
}
