import { Code } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { Logger } from "pino";
import type { Metrics } from "../../metrics.js";
import type { CallObserver } from "./failure.js";

/** OpenTelemetry's `rpc.system` for each protocol (connect_rpc and grpc are its own names). */
const systems: Record<string, string> = {
  connect: "connect_rpc",
  grpc: "grpc",
  "grpc-web": "grpc_web",
  hrpc: "hrpc",
};

/**
 * The end of every call: a request log line at `debug` (method, protocol,
 * code, duration, client address; never a header or a body, so nothing to
 * redact) and the RPC duration histogram.
 */
export function createCallObserver(logger: Logger, metrics: Pick<Metrics, "rpc">): CallObserver {
  return (end) => {
    const slash = end.procedure.lastIndexOf("/");
    const code = end.code === "OK" ? "ok" : codeToString(Code[end.code as keyof typeof Code]);
    metrics.rpc(
      {
        system: systems[end.protocol] ?? end.protocol,
        service: end.procedure.slice(0, slash),
        method: end.procedure.slice(slash + 1),
        code,
      },
      end.durationMs / 1000,
    );
    logger.debug(
      {
        method: end.procedure.slice(slash + 1),
        service: end.procedure.slice(0, slash),
        procedure: end.procedure,
        protocol: end.protocol,
        code,
        durationMs: Math.round(end.durationMs * 10) / 10,
        address: end.address,
      },
      "rpc",
    );
  };
}
