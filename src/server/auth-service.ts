import type { ServiceImpl } from "@connectrpc/connect";
import { authErrors } from "../auth/auth-errors.js";
import type { ClientFeature } from "../auth/flow-machine.js";
import type { Flows } from "../auth/flows.js";
import type { Passkeys } from "../auth/passkeys.js";
import { callerKey, streamSlotHeldKey } from "../caller.js";
import { HarmonyError } from "../errors.js";
import type { Federation } from "../federation/federation.js";
import type { AuthService } from "../gen/protocol/auth/v1/auth_pb.js";
import type { Limits } from "../limits/limits.js";
import type { Metrics } from "../metrics.js";
import { callRecordKey } from "./rpc/failure.js";
import { sessionKey } from "./rpc/interceptors.js";
import { openStepStream, stepResponses } from "./step-stream.js";
import { toAuthStep, toFlowInput } from "./steps.js";

export type AuthServiceDeps = {
  readonly flows: Flows;
  readonly passkeys: Pick<Passkeys, "offeredTo">;
  readonly federation: Federation;
  readonly limits: Pick<Limits, "streams">;
  readonly metrics?: Pick<Metrics, "streamOpened" | "streamClosed">;
};

/**
 * The request header on BeginAuth in which a client lists, comma-separated,
 * the steps of cadenza's own it can render: `passkey`. cadenza's CORS
 * configuration lets browsers send it.
 */
export const CLIENT_FEATURES_HEADER = "cadenza-client-features";

/**
 * protocol.auth.v1.AuthService: decode, call the domain, encode. Sessions for
 * methods that need one are checked by the auth interceptor before these run;
 * the caller (its address, behind trusted proxies) was put in the context
 * where the request entered.
 */
export function createAuthServiceImpl({
  flows,
  passkeys,
  federation,
  limits,
  metrics,
}: AuthServiceDeps) {
  const steps = { flows, limits, metrics };
  return {
    async beginAuth(_req, ctx) {
      // What the client can render beyond Harmony's steps, as it announced
      // it (no Harmony client sends this header), and the server offers it.
      const announced = (ctx.requestHeader.get(CLIENT_FEATURES_HEADER) ?? "")
        .split(",")
        .map((f) => f.trim().toLowerCase());
      const origin = ctx.requestHeader.get("origin") ?? undefined;
      const features: ClientFeature[] = passkeys.offeredTo({ features: announced, origin })
        ? ["passkey"]
        : [];
      return { authId: await flows.begin(ctx.values.get(callerKey), features) };
    },

    async nextStep(req, ctx) {
      const step = await flows.advance(req.authId, toFlowInput(req), ctx.values.get(callerKey));
      return { step: toAuthStep(step) };
    },

    async stepBack(req, ctx) {
      const step = await flows.advance(req.authId, { kind: "back" }, ctx.values.get(callerKey));
      return { step: toAuthStep(step) };
    },

    streamSteps(req, ctx) {
      const call = {
        authId: req.authId,
        caller: ctx.values.get(callerKey),
        transport: ctx.values.get(callRecordKey)?.protocol ?? "in-process",
        slotHeld: ctx.values.get(streamSlotHeldKey),
      };
      return stepResponses((watcher) => openStepStream(steps, call, watcher), ctx.signal);
    },

    async checkLoggedIn() {
      return {};
    },

    async federate(req, ctx) {
      // Set by the auth interceptor: Federate requires authentication.
      const session = ctx.values.get(sessionKey);
      if (!session) throw new HarmonyError(authErrors.blankSession);
      const token = await federation.federate(
        session.userId,
        req.serverId,
        ctx.values.get(callerKey),
      );
      return { token };
    },

    async loginFederated(req, ctx) {
      const session = await federation.loginFederated(
        req.authToken,
        req.serverId,
        ctx.values.get(callerKey),
      );
      return { session };
    },

    async key() {
      return { key: federation.key() };
    },
  } satisfies ServiceImpl<typeof AuthService>;
}
