import type { FastifyPluginAsync } from "fastify";
import type { AppContext } from "../app-context.js";
import { isDatabaseUnavailable } from "../db/connection-failure.js";
import { appliedVersion } from "../db/migrate.js";

/** The database did not answer /readyz within READY_TIMEOUT. */
class ReadinessTimeout extends Error {
  constructor(ms: number) {
    super(`the database did not answer within ${ms} ms`);
    this.name = "ReadinessTimeout";
  }
}

/**
 * `GET /healthz` (the process runs) and `GET /readyz` (the database is
 * reachable and fully migrated, and the server is not shutting down).
 * `/readyz` answers within READY_TIMEOUT even when the database is frozen: a
 * probe that hangs tells an orchestrator nothing, and it would hold a
 * connection the calls need.
 */
export function healthRoutes(
  ctx: Pick<AppContext, "db" | "logger" | "schemaVersion"> & {
    readonly config: Pick<AppContext["config"], "readyTimeoutMs">;
  },
  shuttingDown: AbortSignal,
): FastifyPluginAsync {
  return async (app) => {
    app.get("/healthz", async () => ({ status: "ok" }));
    app.get("/readyz", async (_req, reply) => {
      if (shuttingDown.aborted) return reply.code(503).send({ status: "shutting down" });
      let timer: NodeJS.Timeout | undefined;
      try {
        const version = await Promise.race([
          appliedVersion(ctx.db),
          new Promise<never>((_, reject) => {
            timer = setTimeout(
              () => reject(new ReadinessTimeout(ctx.config.readyTimeoutMs)),
              ctx.config.readyTimeoutMs,
            );
          }),
        ]);
        if (version < ctx.schemaVersion) {
          return reply.code(503).send({ status: "migrations pending", version });
        }
        return { status: "ready", schemaVersion: version };
      } catch (err) {
        // An outage is logged once by the db layer, not once per probe.
        if (err instanceof ReadinessTimeout || isDatabaseUnavailable(err)) {
          ctx.logger.debug({ err }, "readiness check failed");
        } else {
          ctx.logger.warn({ err }, "readiness check failed");
        }
        return reply.code(503).send({ status: "database unreachable" });
      } finally {
        clearTimeout(timer);
      }
    });
  };
}
