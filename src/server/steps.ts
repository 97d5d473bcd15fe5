import { create } from "@bufbuild/protobuf";
import type { FlowInput, FormValue, StepView } from "../auth/flow-machine.js";
import {
  type AuthStep,
  AuthStepSchema,
  type NextStepRequest,
} from "../gen/protocol/auth/v1/auth_pb.js";

/** A step as the wire carries it. */
export function toAuthStep(view: StepView): AuthStep {
  switch (view.kind) {
    case "choice":
      return create(AuthStepSchema, {
        canGoBack: view.canGoBack,
        step: { case: "choice", value: { title: view.title, options: [...view.options] } },
      });
    case "form":
      return create(AuthStepSchema, {
        canGoBack: view.canGoBack,
        step: {
          case: "form",
          value: { title: view.title, fields: view.fields.map((f) => ({ ...f })) },
        },
      });
    case "session":
      return create(AuthStepSchema, {
        canGoBack: false,
        step: {
          case: "session",
          value: { userId: view.userId, sessionToken: view.sessionToken },
        },
      });
  }
}

/** What a NextStepRequest asks of the flow. */
export function toFlowInput(req: NextStepRequest): FlowInput {
  switch (req.step.case) {
    case "choice":
      return { kind: "choice", choice: req.step.value.choice };
    case "form":
      return {
        kind: "form",
        values: req.step.value.fields.map(({ field }): FormValue => {
          switch (field.case) {
            case "bytes":
              return { kind: "bytes", value: field.value };
            case "string":
              return { kind: "string", value: field.value };
            case "number":
              return { kind: "number", value: field.value };
            default:
              return { kind: "unset" };
          }
        }),
      };
    default:
      return { kind: "current" };
  }
}
