import type { ServiceImpl } from "@connectrpc/connect";
import type { Flows } from "../auth/flows.js";
import { HarmonyError, hrpcErrors } from "../errors.js";
import type { AuthService } from "../gen/protocol/auth/v1/auth_pb.js";
import { toAuthStep, toFlowInput } from "./steps.js";

export type AuthServiceDeps = {
  readonly flows: Flows;
};

const federationNotBuilt = (): never => {
  throw new HarmonyError(hrpcErrors.notImplemented, {
    message: "federation (Federate, LoginFederated, Key) is not available on this server yet",
  });
};

/**
 * protocol.auth.v1.AuthService: decode, call the domain, encode. Sessions for
 * methods that need one are checked by the auth interceptor before these run.
 */
export function createAuthServiceImpl({ flows }: AuthServiceDeps) {
  return {
    async beginAuth() {
      return { authId: await flows.begin() };
    },

    async nextStep(req) {
      return { step: toAuthStep(await flows.advance(req.authId, toFlowInput(req))) };
    },

    async stepBack(req) {
      return { step: toAuthStep(await flows.advance(req.authId, { kind: "back" })) };
    },

    async *streamSteps(req, ctx) {
      for await (const step of flows.stream(req.authId, ctx.signal)) {
        yield { step: toAuthStep(step) };
      }
    },

    async checkLoggedIn() {
      return {};
    },

    federate: federationNotBuilt,
    loginFederated: federationNotBuilt,
    key: federationNotBuilt,
  } satisfies ServiceImpl<typeof AuthService>;
}
