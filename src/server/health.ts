import type { FastifyPluginAsync } from "fastify";
import type { AppContext } from "../app-context.js";
import { appliedVersion } from "../db/migrate.js";

/**
 * `GET /healthz` (the process runs) and `GET /readyz` (the database is
 * reachable and fully migrated, and the server is not shutting down).
 */
export function healthRoutes(
  ctx: Pick<AppContext, "db" | "logger" | "schemaVersion">,
  shuttingDown: AbortSignal,
): FastifyPluginAsync {
  return async (app) => {
    app.get("/healthz", async () => ({ status: "ok" }));
    app.get("/readyz", async (_req, reply) => {
      if (shuttingDown.aborted) return reply.code(503).send({ status: "shutting down" });
      try {
        const version = await appliedVersion(ctx.db);
        if (version < ctx.schemaVersion) {
          return reply.code(503).send({ status: "migrations pending", version });
        }
        return { status: "ready", schemaVersion: version };
      } catch (err) {
        ctx.logger.warn({ err }, "readiness check failed");
        return reply.code(503).send({ status: "database unreachable" });
      }
    });
  };
}
