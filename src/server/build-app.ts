import { setMaxListeners } from "node:events";
import {
  createServer as createHttp1Server,
  type Server as Http1Server,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import { type ConnectRouter, cors as connectCors, type Interceptor } from "@connectrpc/connect";
import { universalResponseToNodeResponse } from "@connectrpc/connect-node";
import fastifyCors from "@fastify/cors";
import {
  type FastifyInstance,
  type FastifyPluginAsync,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerFactoryHandler,
  fastify,
  LogController,
} from "fastify";
import type { AppContext } from "../app-context.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import { AccountService } from "../gen/cadenza/account/v1/account_pb.js";
import { AdminService } from "../gen/cadenza/admin/v1/admin_pb.js";
import { HomeserverService } from "../gen/cadenza/homeserver/v1/homeserver_pb.js";
import { PasskeyService } from "../gen/cadenza/passkey/v1/passkey_pb.js";
import { AuthService } from "../gen/protocol/auth/v1/auth_pb.js";
import { createAccountServiceImpl } from "./account-service.js";
import { createAdminServiceImpl } from "./admin-service.js";
import { CLIENT_FEATURES_HEADER, createAuthServiceImpl } from "./auth-service.js";
import { callerOf, createClientAddressOf } from "./client-address.js";
import { healthRoutes } from "./health.js";
import { createHomeserverServiceImpl } from "./homeserver-service.js";
import type { BadHostAnswer } from "./host-header.js";
import { createHrpcAdapter } from "./hrpc/adapter.js";
import { bearerMatches, internalAuthInterceptor, internalErrors } from "./internal-auth.js";
import { createPasskeyServiceImpl } from "./passkey-service.js";
import { createDirectHttp } from "./rpc/direct-http.js";
import { createDirectStreams, type DirectMethod } from "./rpc/direct-stream.js";
import type { CallObserver } from "./rpc/failure.js";
import { answerUnknownMethod, rpcRoutes } from "./rpc/fastify.js";
import { authInterceptor, errorInterceptor } from "./rpc/interceptors.js";
import { createCallObserver } from "./rpc/observe.js";
import { createRpcRouter, type RpcService } from "./rpc/router.js";
import { streamStepsDirect } from "./step-stream.js";
import { webUiRoutes } from "./web-ui.js";

export interface BuiltApp {
  readonly app: Pick<FastifyInstance, "close">;
  /** Fastify's request handler, for the HTTP/2 server that shares it. */
  readonly handler: FastifyServerFactoryHandler;
  /** The HTTP/1.1 server Fastify runs on (never listening itself: see listener.ts). */
  readonly http1: Http1Server;
  /** Ends open streams with Unavailable. */
  beginShutdown(): void;
  /** Answers an RPC whose Host forms no URL in its protocol's error format. */
  readonly answerBadHost: BadHostAnswer;
}

export interface BuildOptions {
  /**
   * How StreamSteps is served over Connect, gRPC, gRPC-Web and hRPC:
   * `direct` (the default) outside Connect's per-call pipeline, under the
   * same rules (rpc/direct-stream.ts), for a fraction of the memory;
   * `pipeline` through Connect's handler like every other method. Tests run
   * the protocol suites on both, so the two cannot drift apart.
   */
  readonly streamSteps?: "direct" | "pipeline";
}

/** The end of every call: the request log line and the RPC duration histogram. */
const observerOf = (ctx: AppContext): CallObserver => createCallObserver(ctx.logger, ctx.metrics);

/** What a listener serves: its services and the interceptors every call there runs through. */
interface Surface {
  readonly services: RpcService[];
  /** Outermost first: the error boundary, so it sees everything the rest throw. */
  readonly interceptors: Interceptor[];
}

/**
 * The public port: Harmony's AuthService, for clients and other homeservers;
 * cadenza's account service and passkey sign-in options, for users.
 */
function publicSurface(ctx: AppContext): Surface {
  return {
    services: [
      { service: AuthService, impl: createAuthServiceImpl(ctx) },
      { service: AccountService, impl: createAccountServiceImpl(ctx) },
      { service: PasskeyService, impl: createPasskeyServiceImpl(ctx) },
    ],
    interceptors: [errorInterceptor(ctx.logger, observerOf(ctx)), authInterceptor(ctx.sessions)],
  };
}

/** The internal port: the homeserver's own services, behind INTERNAL_TOKEN. */
function internalSurface(ctx: AppContext): Surface {
  return {
    services: [
      { service: HomeserverService, impl: createHomeserverServiceImpl(ctx) },
      { service: AdminService, impl: createAdminServiceImpl(ctx) },
    ],
    interceptors: [
      errorInterceptor(ctx.logger, observerOf(ctx)),
      internalAuthInterceptor(ctx.config.internal.token),
    ],
  };
}

const routesOf = (surface: Surface) => ({
  routes(router: ConnectRouter) {
    for (const { service, impl } of surface.services) router.service(service, impl);
  },
  interceptors: surface.interceptors,
});

/**
 * The public port's services and interceptors, for tests that call them in
 * memory through `createRouterTransport`.
 */
export const connectRoutes = (ctx: AppContext) => routesOf(publicSurface(ctx));

/** The same for the internal port. */
export const internalConnectRoutes = (ctx: AppContext) => routesOf(internalSurface(ctx));

/**
 * One listener's Fastify application. The public one: CORS, health checks,
 * the web client (WEB_UI), and the RPC router serving Connect (JSON and binary), gRPC and gRPC-Web on
 * the same paths, with hRPC in front of it for Harmony's own clients. The
 * internal one: health checks, `/metrics`, and the homeserver's and admin
 * services, behind INTERNAL_TOKEN. Neither serves the other's services.
 *
 * `draining` aborts when shutdown begins: /readyz answers 503 from then on,
 * while calls are still served for SHUTDOWN_DRAIN.
 */
export async function buildApp(
  ctx: AppContext,
  which: "public" | "internal",
  draining: AbortSignal,
  options: BuildOptions = {},
): Promise<BuiltApp> {
  const { config, logger } = ctx;
  let handler: FastifyServerFactoryHandler | undefined;
  let http1: Http1Server | undefined;
  const shutdown = new AbortController();
  // Every call in flight listens on it: many more than EventTarget's warning threshold.
  setMaxListeners(0, shutdown.signal);

  const surface = which === "public" ? publicSurface(ctx) : internalSurface(ctx);
  const router = createRpcRouter(surface.services, {
    logger,
    interceptors: surface.interceptors,
    readMaxBytes: config.readMaxBytes,
    // No call outlives a flow: StreamSteps ends when its flow expires.
    maxTimeoutMs: config.flowTtlMs + 60_000,
    shutdownSignal: shutdown.signal,
    observe: observerOf(ctx),
  });

  // StreamSteps outside Connect's per-call pipeline, under the same rules.
  const direct =
    which === "public" && options.streamSteps !== "pipeline"
      ? {
          methods: new Map<DescMethod, DirectMethod>([
            [AuthService.method.streamSteps, streamStepsDirect(ctx)],
          ]),
          streams: createDirectStreams({
            logger,
            sessions: ctx.sessions,
            shutdownSignal: shutdown.signal,
            observe: observerOf(ctx),
          }),
        }
      : undefined;

  // One rule for who the client is, for every protocol (TRUSTED_PROXIES).
  const addressOf = createClientAddressOf(config.trustedProxies);
  const callerFor = (req: IncomingMessage | Http2ServerRequest) =>
    callerOf(addressOf, req.socket.remoteAddress, req.headers);

  // hRPC goes to the same methods: unary calls by content type, before
  // Fastify parses a body it does not know; streams by WebSocket upgrade.
  const hrpc =
    which === "public"
      ? createHrpcAdapter({
          methods: router.methods,
          callerOf: callerFor,
          streams: ctx.limits.streams,
          logger,
          readMaxBytes: config.readMaxBytes,
          firstMessageTimeoutMs: config.hrpcStreamRequestTimeoutMs,
          ...(direct ? { direct } : {}),
        })
      : undefined;
  /** Serves an hRPC unary call on a hijacked reply. */
  const serveHrpc = async (request: FastifyRequest, reply: FastifyReply) => {
    reply.hijack();
    // Headers set by earlier hooks (CORS) live on the reply, not the raw response.
    for (const [name, value] of Object.entries(reply.getHeaders())) {
      if (value !== undefined) reply.raw.setHeader(name, value);
    }
    await hrpc?.serveUnary(request.raw, reply.raw);
  };

  const app = fastify({
    loggerInstance: logger,
    // A URL the router cannot decode reaches no hook and no route: it is an
    // unknown method too, answered in the protocol the request speaks.
    frameworkErrors: (error, request, reply) => {
      const answered = hrpc?.claims(request.raw)
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

  if (which === "public") {
    await app.register(fastifyCors, {
      // An exact list; an empty one allows no cross-origin callers.
      origin: config.corsOrigins.includes("*") ? true : [...config.corsOrigins],
      methods: [...connectCors.allowedMethods],
      allowedHeaders: [...connectCors.allowedHeaders, "Authorization", CLIENT_FEATURES_HEADER],
      exposedHeaders: [...connectCors.exposedHeaders, "hrpc-version", "retry-after"],
      maxAge: 7200,
    });
  }

  await app.register(healthRoutes(ctx, draining));
  // The reference web client at `/` (WEB_UI): exact file routes, which no RPC path can be.
  if (which === "public" && ctx.webUi) await app.register(webUiRoutes(ctx.webUi));
  if (which === "internal") await app.register(metricsRoute(ctx));

  if (hrpc) {
    app.addHook("onRequest", async (request, reply) => {
      if (!hrpc.claims(request.raw)) return;
      await serveHrpc(request, reply);
      return reply;
    });
  }
  await app.register(
    rpcRoutes(
      router,
      logger,
      callerFor,
      direct && createDirectHttp({ ...direct, handlerOptions: router.handlerOptions }),
    ),
  );

  await app.ready();
  if (!handler || !http1) throw new Error("fastify did not call serverFactory");
  if (hrpc) http1.on("upgrade", (req, socket, head) => hrpc.serveUpgrade(req, socket, head));
  return {
    app,
    handler,
    http1,
    answerBadHost(req, res, problem) {
      const message = `the request's Host header is unusable (${problem}): send the server's name, as in its URL`;
      if (hrpc?.claims(req)) {
        hrpc.refuse(req, res, message);
        return true;
      }
      const path = (req.url ?? "/").split("?", 1)[0] ?? "/";
      const contentType = req.headers["content-type"] ?? "";
      const method = router.methods.get(path);
      // A method path is always answered as an RPC; another path only when
      // its Content-Type names one of the protocols (else the plain 400).
      const answer = method
        ? method.refuse(contentType, message)
        : router.unknownMethod(path, contentType);
      if (answer === undefined) return false;
      universalResponseToNodeResponse(answer, res as ServerResponse).catch((err: unknown) =>
        logger.debug({ err }, "answer not delivered: the connection closed"),
      );
      return true;
    },
    beginShutdown() {
      shutdown.abort(new HarmonyError(hrpcErrors.unavailable));
      hrpc?.close();
    },
  };
}

/**
 * `GET /metrics` in Prometheus' text format, on the internal port, behind
 * INTERNAL_TOKEN like every internal call (Prometheus sends it as a bearer
 * token: `authorization: { credentials: … }` in its scrape config).
 */
function metricsRoute(ctx: AppContext): FastifyPluginAsync {
  return async (app) => {
    app.get("/metrics", async (request, reply) => {
      const token = ctx.config.internal.token;
      if (token !== undefined && !bearerMatches(request.headers.authorization, token)) {
        return reply
          .code(401)
          .header("www-authenticate", "Bearer")
          .send({ error: internalErrors.badInternalToken.message });
      }
      return reply.header("content-type", ctx.metrics.contentType).send(await ctx.metrics.text());
    });
  };
}
