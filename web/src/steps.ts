import type { AuthStep } from "../../src/gen/protocol/auth/v1/auth_pb.js";
import { type FieldView, fieldView } from "./fields.js";
import { optionLabel, titleLabel } from "./labels.js";

/**
 * A step as the page shows it, whatever the flow: Harmony's flow is
 * server-driven, so the page renders any step from its kind alone (a choice
 * as buttons, a form as labelled inputs, a session as "signed in"), and
 * knows no flow by name.
 */
export type StepView =
  | {
      readonly kind: "choice";
      readonly title: string;
      readonly heading: string;
      readonly canGoBack: boolean;
      readonly options: readonly { readonly value: string; readonly label: string }[];
    }
  | {
      readonly kind: "form";
      readonly title: string;
      readonly heading: string;
      readonly canGoBack: boolean;
      readonly fields: readonly FieldView[];
    }
  | {
      readonly kind: "waiting";
      readonly title: string;
      readonly heading: string;
      readonly description: string;
      readonly canGoBack: boolean;
    }
  | { readonly kind: "session"; readonly userId: string; readonly sessionToken: string }
  /** A step of a kind this page does not know (a newer protocol's). */
  | { readonly kind: "unknown"; readonly canGoBack: boolean };

export function stepView(step: AuthStep): StepView {
  const { canGoBack } = step;
  const s = step.step;
  switch (s.case) {
    case "choice":
      return {
        kind: "choice",
        title: s.value.title,
        heading: titleLabel(s.value.title),
        canGoBack,
        options: s.value.options.map((value) => ({ value, label: optionLabel(value) })),
      };
    case "form":
      return {
        kind: "form",
        title: s.value.title,
        heading: titleLabel(s.value.title),
        canGoBack,
        fields: s.value.fields.map(fieldView),
      };
    case "waiting":
      return {
        kind: "waiting",
        title: s.value.title,
        heading: titleLabel(s.value.title),
        description: s.value.description,
        canGoBack,
      };
    case "session":
      return {
        kind: "session",
        userId: s.value.userId.toString(),
        sessionToken: s.value.sessionToken,
      };
    default:
      return { kind: "unknown", canGoBack };
  }
}
