import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Passkey } from "../../src/gen/cadenza/account/v1/account_pb.js";
import { h, uid } from "./dom.js";
import { isBlankSession, problemOf, sentence } from "./problems.js";

/** The passkey part of the account page's calls, on the page's session. */
export interface PasskeyActions {
  /** Whether this browser can make and use passkeys at all. */
  readonly supported: boolean;
  list(): Promise<readonly Passkey[]>;
  /** Whether the account has TOTP on: adding a passkey then needs a code as well. */
  secondFactorOn(): Promise<boolean>;
  /**
   * Checks the password (and the TOTP code, when TOTP is on), runs the
   * browser's ceremony, stores the passkey under `name`.
   */
  add(password: string, code: string, name: string): Promise<Passkey | undefined>;
  remove(passkeyId: string): Promise<void>;
  /** The page's session is gone. */
  signedOut(message: string): void;
  announce(text: string): void;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function time(ts: Timestamp | undefined, none: string): HTMLElement | string {
  if (!ts) return none;
  const date = timestampDate(ts);
  return h("time", { datetime: date.toISOString() }, dateFormat.format(date));
}

/**
 * The account page's passkeys: those the account has (name, when added, when
 * last used, a button to remove each) and a form to add one, which asks for
 * the password first, as cadenza does before adding a way to sign in.
 */
export function renderPasskeys(actions: PasskeyActions): HTMLElement {
  const headingId = uid("passkeys");
  const problem = h("p", { class: "problem", role: "alert", "aria-atomic": "true" });
  const list = h("ul", { class: "passkeys", "aria-labelledby": headingId });
  const empty = h("p", { class: "quiet" }, "You have no passkeys yet.");
  const section = h(
    "section",
    { class: "passkeys-section", "aria-labelledby": headingId },
    h("h3", { id: headingId }, "Passkeys"),
    h(
      "p",
      { class: "quiet" },
      "A passkey signs you in without your password, with your fingerprint, face or device PIN.",
    ),
    list,
    empty,
  );

  const run = async (controls: readonly HTMLButtonElement[], call: () => Promise<void>) => {
    problem.textContent = "";
    for (const b of controls) b.disabled = true;
    try {
      await call();
    } catch (err) {
      const p = problemOf(err);
      if (isBlankSession(p)) return actions.signedOut("Your session has ended: sign in again.");
      problem.textContent = p.unreachable
        ? "The server could not be reached: try again."
        : sentence(p.message);
    } finally {
      for (const b of controls) b.disabled = false;
    }
  };

  const refresh = async () => {
    const passkeys = await actions.list();
    empty.hidden = passkeys.length > 0;
    list.replaceChildren(
      ...passkeys.map((p) => {
        const remove = h(
          "button",
          { type: "button", class: "secondary", "data-passkey": p.passkeyId },
          "Remove",
          h("span", { class: "visually-hidden" }, ` the passkey ${p.name}`),
        );
        remove.addEventListener("click", () =>
          run([remove], async () => {
            await actions.remove(p.passkeyId);
            await refresh();
            actions.announce(`The passkey ${p.name} was removed.`);
          }),
        );
        return h(
          "li",
          { "data-passkey": p.passkeyId },
          h("span", { class: "passkey-name" }, p.name),
          " · added ",
          time(p.createdAt, "—"),
          " · last used ",
          time(p.lastUsedAt, "never"),
          " ",
          remove,
        );
      }),
    );
  };

  if (!actions.supported) {
    section.append(h("p", {}, "This browser cannot use passkeys."), problem);
    run([], refresh).catch(() => {});
    return section;
  }

  const passwordId = uid("passkey-password");
  const nameId = uid("passkey-name");
  const codeId = uid("passkey-code");
  const password = h("input", {
    id: passwordId,
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const name = h("input", {
    id: nameId,
    name: "passkey-name",
    type: "text",
    autocomplete: "off",
    maxlength: "64",
    placeholder: "Passkey",
  });
  const code = h("input", {
    id: codeId,
    name: "code",
    type: "text",
    autocomplete: "one-time-code",
  });
  // Shown once the account says TOTP is on (a passkey signs in without it).
  const codeField = h(
    "div",
    { class: "field", hidden: true },
    h("label", { for: codeId }, "Code from your authenticator app, or a recovery code"),
    code,
  );
  const add = h("button", { type: "submit" }, "Add a passkey");
  const form = h(
    "form",
    { novalidate: true, class: "add-passkey", "aria-label": "Add a passkey" },
    h("div", { class: "field" }, h("label", { for: passwordId }, "Your password"), password),
    codeField,
    h(
      "div",
      { class: "field" },
      h("label", { for: nameId }, "Name for the new passkey (optional)"),
      name,
    ),
    h("div", { class: "actions" }, add),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (add.disabled) return;
    run([add], async () => {
      // A code is good once, right or wrong here: the next try needs the next one.
      const entered = code.value;
      code.value = "";
      const added = await actions.add(password.value, entered, name.value);
      password.value = "";
      name.value = "";
      await refresh();
      actions.announce(`The passkey ${added?.name ?? ""} was added: you can sign in with it now.`);
    }).catch(() => {});
  });
  section.append(form, problem);
  run([add], async () => {
    await refresh();
    codeField.hidden = !(await actions.secondFactorOn());
  }).catch(() => {});
  return section;
}
