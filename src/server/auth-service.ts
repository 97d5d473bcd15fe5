import type { ServiceImpl } from "@connectrpc/connect";
import { authErrors } from "../auth/auth-errors.js";
import type { Flows } from "../auth/flows.js";
import { HarmonyError } from "../errors.js";
import type { Federation } from "../federation/federation.js";
import type { AuthService } from "../gen/protocol/auth/v1/auth_pb.js";
import { sessionKey } from "./rpc/interceptors.js";
import { toAuthStep, toFlowInput } from "./steps.js";

export type AuthServiceDeps = {
  readonly flows: Flows;
  readonly federation: Federation;
};

/**
 * protocol.auth.v1.AuthService: decode, call the domain, encode. Sessions for
 * methods that need one are checked by the auth interceptor before these run.
 */
export function createAuthServiceImpl({ flows, federation }: AuthServiceDeps) {
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

    async federate(req, ctx) {
      // Set by the auth interceptor: Federate requires authentication.
      const session = ctx.values.get(sessionKey);
      if (!session) throw new HarmonyError(authErrors.blankSession);
      return { token: await federation.federate(session.userId, req.serverId) };
    },

    async loginFederated(req) {
      const session = await federation.loginFederated(req.authToken, req.serverId);
      return { session };
    },

    async key() {
      return { key: federation.key() };
    },
  } satisfies ServiceImpl<typeof AuthService>;
}
