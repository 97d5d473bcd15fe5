import { h, uid } from "./dom.js";
import type { FieldView } from "./fields.js";
import { fieldLabel } from "./labels.js";
import { fieldOfProblem, type Problem, problemOf, sentence, waitText } from "./problems.js";
import type { StepView } from "./steps.js";

/** What the buttons of a step do; each rejects with the call's error, which the step shows. */
export interface StepActions {
  choose(option: string): Promise<void>;
  submit(fields: readonly FieldView[], values: readonly string[]): Promise<void>;
  back(): Promise<void>;
  startOver(): void;
  /** Says something politely to screen readers (the page's status region). */
  announce(text: string): void;
  /**
   * The value of a field no one types (FieldKind.ceremony): a passkey's
   * assertion, from the browser. Absent where the page cannot do it.
   */
  ceremony?(kind: "passkey"): Promise<string>;
}

type ShownStep = Exclude<StepView, { kind: "session" }>;

/**
 * Where a step shows a problem: next to the field it concerns, else on the
 * step as a whole. Both are live regions, present from the start and empty,
 * so screen readers announce a message as it appears.
 */
interface ProblemSlots {
  readonly step: HTMLElement;
  readonly fields: readonly { input: HTMLInputElement | undefined; message: HTMLElement }[];
  readonly fieldViews: readonly FieldView[];
  /** The controls to disable while a call is in flight or a wait runs. */
  readonly controls: readonly HTMLButtonElement[];
  /** The button whose text counts a wait down. */
  readonly primary: HTMLButtonElement | undefined;
}

function clearProblems(slots: ProblemSlots) {
  slots.step.textContent = "";
  for (const f of slots.fields) {
    f.message.textContent = "";
    f.input?.removeAttribute("aria-invalid");
  }
}

function setBusy(slots: ProblemSlots, busy: boolean) {
  for (const c of slots.controls) c.disabled = busy;
}

/** Disables the controls for a throttle's wait, counting it down on the primary button. */
function waitOut(slots: ProblemSlots, seconds: number, announce: (text: string) => void) {
  setBusy(slots, true);
  const primary = slots.primary;
  const label = primary?.textContent ?? "";
  const until = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (!slots.step.isConnected) return clearInterval(timer);
    if (left > 0) {
      if (primary) primary.textContent = `Wait ${waitText(left)}`;
      return;
    }
    clearInterval(timer);
    if (primary) primary.textContent = label;
    setBusy(slots, false);
    announce("You can try again now.");
  };
  const timer = setInterval(tick, 1000);
  tick();
}

function showProblem(slots: ProblemSlots, problem: Problem, announce: (text: string) => void) {
  clearProblems(slots);
  const wait =
    problem.retryAfterSeconds === undefined
      ? ""
      : ` You can try again in ${waitText(problem.retryAfterSeconds)}.`;
  const text = problem.unreachable
    ? "The server could not be reached, or refused this page. Check your connection and try again."
    : `${sentence(problem.message)}${wait}`;
  const index = fieldOfProblem(problem.identifier, slots.fieldViews);
  const field = index === undefined ? undefined : slots.fields[index];
  if (field?.input) {
    field.input.setAttribute("aria-invalid", "true");
    field.message.textContent = text;
    field.input.focus();
  } else {
    slots.step.textContent = text;
  }
  if (problem.retryAfterSeconds !== undefined && problem.retryAfterSeconds > 0) {
    waitOut(slots, problem.retryAfterSeconds, announce);
  }
}

/**
 * Runs one call of a step, its controls disabled meanwhile, its error shown
 * where it belongs. An accepted answer leaves them disabled: the next step,
 * which the stream brings, replaces this one (no double submission).
 */
async function attempt(slots: ProblemSlots, actions: StepActions, call: () => Promise<void>) {
  clearProblems(slots);
  setBusy(slots, true);
  try {
    await call();
  } catch (err) {
    setBusy(slots, false);
    showProblem(slots, problemOf(err), actions.announce);
  }
}

/**
 * A field whose value the browser gives (a passkey's assertion): no input,
 * just what will happen, said before it does.
 */
function ceremonyRow(field: FieldView) {
  const id = uid(`field-${field.name.replace(/[^A-Za-z0-9_-]/g, "") || "x"}`);
  const message = h("p", {
    id: `${id}-problem`,
    class: "field-problem",
    "aria-live": "assertive",
    "aria-atomic": "true",
  });
  const row = h(
    "div",
    { class: "field", "data-type": field.type },
    h(
      "p",
      { id, class: "hint" },
      "Your browser will ask you to choose a passkey and unlock it, with your fingerprint, face or PIN.",
    ),
    message,
  );
  return { row, input: undefined, message };
}

function fieldRow(field: FieldView) {
  if (field.kind.ceremony) return ceremonyRow(field);
  const id = uid(`field-${field.name.replace(/[^A-Za-z0-9_-]/g, "") || "x"}`);
  const messageId = `${id}-problem`;
  const hintId = `${id}-hint`;
  const input = h("input", {
    id,
    name: field.name,
    type: field.kind.inputType,
    autocomplete: field.autocomplete,
    inputmode: field.kind.inputMode,
    spellcheck: field.kind.inputType === "text" ? undefined : "false",
    autocapitalize: "off",
    "aria-describedby": field.known ? messageId : `${hintId} ${messageId}`,
    "data-type": field.type,
  });
  const message = h("p", {
    id: messageId,
    class: "field-problem",
    "aria-live": "assertive",
    "aria-atomic": "true",
  });
  const row = h(
    "div",
    { class: "field" },
    h("label", { for: id }, fieldLabel(field.name)),
    input,
    !field.known &&
      h(
        "p",
        { id: hintId, class: "hint" },
        `This server asks for a field of type “${field.type}”, which this page does not know: it is sent as text.`,
      ),
    message,
  );
  return { row, input, message };
}

/**
 * Renders any step but the session generically: a choice as one button per
 * option, a form as a labelled input per field (by type), a waiting step as
 * its text; with "Back" when the step allows it.
 */
export function renderStep(view: ShownStep, actions: StepActions): HTMLElement {
  const headingId = uid("step");
  const problemId = `${headingId}-problem`;
  const heading = h(
    "h2",
    { id: headingId, tabindex: "-1" },
    view.kind === "unknown" ? "This step cannot be shown" : view.heading,
  );
  const stepProblem = h("p", {
    id: problemId,
    class: "problem",
    role: "alert",
    "aria-atomic": "true",
  });
  const back =
    view.canGoBack &&
    h("button", { type: "button", class: "secondary", "data-action": "back" }, "Back");
  const section = h("section", {
    class: "step",
    "aria-labelledby": headingId,
    "data-kind": view.kind,
    "data-title": view.kind === "unknown" ? undefined : view.title,
  });

  const noFields = { fields: [], fieldViews: [] };
  if (view.kind === "choice") {
    const buttons = view.options.map((o) =>
      h("button", { type: "button", "data-option": o.value }, o.label),
    );
    const controls = back ? [...buttons, back] : buttons;
    const slots: ProblemSlots = { step: stepProblem, ...noFields, controls, primary: undefined };
    for (const [i, b] of buttons.entries()) {
      const option = view.options[i]?.value ?? "";
      b.addEventListener("click", () => attempt(slots, actions, () => actions.choose(option)));
    }
    if (back) back.addEventListener("click", () => attempt(slots, actions, actions.back));
    section.append(
      heading,
      view.options.length === 0
        ? h("p", {}, "There is nothing to choose here.")
        : h("div", { class: "options", role: "group", "aria-labelledby": headingId }, ...buttons),
      stepProblem,
      back ? h("div", { class: "actions" }, back) : "",
    );
    return section;
  }

  if (view.kind === "form") {
    const rows = view.fields.map(fieldRow);
    const ceremony = view.fields.find((f) => f.kind.ceremony)?.kind.ceremony;
    const submit = h("button", { type: "submit" }, ceremony ? "Use a passkey" : "Continue");
    const controls = back ? [submit, back] : [submit];
    const slots: ProblemSlots = {
      step: stepProblem,
      fields: rows,
      fieldViews: view.fields,
      controls,
      primary: submit,
    };
    const form = h(
      "form",
      { novalidate: true, "aria-labelledby": headingId, "aria-describedby": problemId },
      ...rows.map((r) => r.row),
      stepProblem,
      h("div", { class: "actions" }, submit, back),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (submit.disabled) return;
      const typed = rows.map((r) => r.input?.value ?? "");
      attempt(slots, actions, async () => {
        // A passkey's assertion is asked of the browser only now, on the user's action.
        const values = await Promise.all(
          view.fields.map((f, i) => {
            const kind = f.kind.ceremony;
            if (!kind) return typed[i] ?? "";
            if (!actions.ceremony) throw new Error("this page cannot use passkeys here");
            return actions.ceremony(kind);
          }),
        );
        await actions.submit(view.fields, values);
      }).catch(() => {});
    });
    if (back) back.addEventListener("click", () => attempt(slots, actions, actions.back));
    section.append(heading, form);
    return section;
  }

  const controls = back ? [back] : [];
  const slots: ProblemSlots = { step: stepProblem, ...noFields, controls, primary: undefined };
  if (back) back.addEventListener("click", () => attempt(slots, actions, actions.back));
  if (view.kind === "waiting") {
    section.append(
      heading,
      h("p", {}, view.description),
      h("p", { class: "quiet" }, "Waiting for the server…"),
      stepProblem,
      back ? h("div", { class: "actions" }, back) : "",
    );
    return section;
  }
  const restart = h("button", { type: "button", class: "secondary" }, "Start over");
  restart.addEventListener("click", () => actions.startOver());
  section.append(
    heading,
    h("p", {}, "The server sent a kind of step this page does not know."),
    stepProblem,
    h("div", { class: "actions" }, back, restart),
  );
  return section;
}

/** Moves focus into a freshly shown step: its first field or option, else its heading. */
export function focusStep(section: HTMLElement) {
  const target =
    section.querySelector<HTMLElement>("input, .options button, form button[type=submit]") ??
    section.querySelector<HTMLElement>("h2");
  target?.focus();
}
