import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { currentStep } from "../auth/flow-machine.js";
import type { Flows } from "../auth/flows.js";
import { type Passkeys, passkeyErrors } from "../auth/passkeys.js";
import { callerKey } from "../caller.js";
import { HarmonyError } from "../errors.js";
import type { PasskeyService } from "../gen/cadenza/passkey/v1/passkey_pb.js";
import type { Limits } from "../limits/limits.js";

export type PasskeyServiceDeps = {
  readonly flows: Pick<Flows, "peek">;
  readonly passkeys: Pick<Passkeys, "signInOptions">;
  readonly limits: Pick<Limits, "rate">;
};

/**
 * cadenza.passkey.v1.PasskeyService on the public port: the options of a
 * flow's passkey step. Each call writes a challenge, so it counts on the
 * per-address budget of form submissions, as the answer it leads to does.
 */
export function createPasskeyServiceImpl({ flows, passkeys, limits }: PasskeyServiceDeps) {
  return {
    async getSignInOptions(req, ctx: HandlerContext) {
      await limits.rate("forms", ctx.values.get(callerKey));
      const { flowKey, flow } = await flows.peek(req.authId);
      if (currentStep(flow.state) !== "passkey")
        throw new HarmonyError(passkeyErrors.noPasskeyStep);
      return { optionsJson: await passkeys.signInOptions(flowKey, flow.expiresAt) };
    },
  } satisfies ServiceImpl<typeof PasskeyService>;
}
