import { createServer as createHttp1Server, type Server as Http1Server } from "node:http";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  cors as connectCors,
  createConnectRouter,
  type Interceptor,
} from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import fastifyCors from "@fastify/cors";
import {
  type FastifyInstance,
  type FastifyServerFactoryHandler,
  fastify,
  LogController,
} from "fastify";
import type { AppContext } from "../app-context.js";
import { hrpcErrors } from "../errors.js";
import { AuthService } from "../gen/protocol/auth/v1/auth_pb.js";
import { createAuthServiceImpl } from "./auth-service.js";
import { healthRoutes } from "./health.js";
import { createHrpcAdapter } from "./hrpc.js";
import { authInterceptor, errorInterceptor } from "./interceptors.js";

export interface BuiltApp {
  readonly app: Pick<FastifyInstance, "close">;
  /** Fastify's request handler, for the HTTP/2 server that shares it. */
  readonly handler: FastifyServerFactoryHandler;
  /** The HTTP/1.1 server Fastify runs on (never listening itself: see listener.ts). */
  readonly http1: Http1Server;
  /** Marks the server as draining: /readyz fails, open streams end with Unavailable. */
  beginShutdown(): void;
}

/**
 * The Connect services and interceptors, shared by the server, its hRPC
 * adapter and by tests that call them in memory through `createRouterTransport`.
 */
export function connectRoutes(ctx: AppContext): {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
} {
  const impl = createAuthServiceImpl(ctx);
  return {
    routes(router) {
      router.service(AuthService, impl);
    },
    // The error interceptor is outermost, so it also sees the auth interceptor's errors.
    interceptors: [errorInterceptor(ctx.logger), authInterceptor(ctx.sessions)],
  };
}

/**
 * The Fastify application: CORS, health checks and the Connect router, which
 * serves Connect (JSON and binary), gRPC and gRPC-Web on the same paths.
 */
export async function buildApp(ctx: AppContext): Promise<BuiltApp> {
  const { config, logger } = ctx;
  let handler: FastifyServerFactoryHandler | undefined;
  let http1: Http1Server | undefined;
  const shutdown = new AbortController();

  const app = fastify({
    loggerInstance: logger,
    // Calls are logged by cadenza where they fail, not once per request.
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
    exposedHeaders: [...connectCors.exposedHeaders, "hrpc-version"],
    maxAge: 7200,
  });

  await app.register(healthRoutes(ctx, shutdown.signal));

  const { routes, interceptors } = connectRoutes(ctx);
  const routerOptions = {
    interceptors,
    readMaxBytes: config.readMaxBytes,
    // No call outlives a flow: StreamSteps ends when its flow expires.
    maxTimeoutMs: config.flowTtlMs + 60_000,
    shutdownSignal: shutdown.signal,
  };

  // hRPC goes to the same handlers (see hrpc.ts): unary calls by content type,
  // before Fastify parses a body it does not know; streams by WebSocket upgrade.
  const router = createConnectRouter(routerOptions);
  routes(router);
  const hrpc = createHrpcAdapter({
    handlers: router.handlers,
    logger,
    readMaxBytes: config.readMaxBytes,
    firstMessageTimeoutMs: config.hrpcStreamRequestTimeoutMs,
  });
  app.addHook("onRequest", async (req, reply) => {
    if (!hrpc.claims(req.raw)) return;
    reply.hijack();
    // Headers set by earlier hooks (CORS) live on the reply, not the raw response.
    for (const [name, value] of Object.entries(reply.getHeaders())) {
      if (value !== undefined) reply.raw.setHeader(name, value);
    }
    await hrpc.serveUnary(req.raw, reply.raw);
    return reply;
  });

  await app.register(fastifyConnectPlugin, { routes, ...routerOptions });

  await app.ready();
  if (!handler || !http1) throw new Error("fastify did not call serverFactory");
  http1.on("upgrade", (req, socket, head) => hrpc.serveUpgrade(req, socket, head));
  return {
    app,
    handler,
    http1,
    beginShutdown() {
      shutdown.abort(new ConnectError(hrpcErrors.unavailable.message, Code.Unavailable));
      hrpc.close();
    },
  };
}
