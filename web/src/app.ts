import { Code } from "@connectrpc/connect";
import { type AccountActions, renderAccount } from "./account-view.js";
import type { ClientConfig } from "./client-config.js";
import { type Clients, withSession } from "./clients.js";
import { h } from "./dom.js";
import { beginFlow, type Flow, type FlowHandlers } from "./flow.js";
import { renderPasskeys } from "./passkey-view.js";
import { passkeysSupported, registerPasskey, signInAssertion } from "./passkeys.js";
import { type Problem, problemOf, sentence, waitText } from "./problems.js";
import type { SessionStore } from "./session-store.js";
import { focusStep, renderStep } from "./step-view.js";

/** How a stream that ended without a session (the flow expired) is shown. */
const expired: Problem = {
  code: Code.DeadlineExceeded,
  identifier: undefined,
  message: "This sign-in has expired: start over.",
  retryAfterSeconds: undefined,
  unreachable: false,
};

export interface AppDeps {
  readonly root: HTMLElement;
  /** A polite live region for what is not an error (a session ended, a wait is over). */
  readonly status: HTMLElement;
  readonly config: ClientConfig;
  readonly clients: Clients;
  readonly sessions: SessionStore;
}

/**
 * The page: signs in through any flow the server drives, then shows the
 * account. With a session from earlier in this tab it shows the account at
 * once (and signs in again if that session has ended).
 */
export function startApp({ root, status, config, clients, sessions }: AppDeps): void {
  let flow: Flow | undefined;
  /** Counts sign-ins, so a flow left behind by "Start over" is ignored. */
  let attempts = 0;

  const announce = (text: string) => {
    // Emptied first, so the same words said twice are announced twice.
    status.textContent = "";
    requestAnimationFrame(() => {
      status.textContent = text;
    });
  };
  const show = (el: HTMLElement) => {
    root.replaceChildren(el);
    focusStep(el);
  };

  const failure = (problem: Problem, heading: string) => {
    const wait =
      problem.retryAfterSeconds === undefined
        ? ""
        : ` Try again in ${waitText(problem.retryAfterSeconds)}.`;
    const text = problem.unreachable
      ? `${config.server} could not be reached, or it does not accept calls from this page's origin (${location.origin}): check the address, and that its CORS_ORIGINS lists this origin.`
      : `${sentence(problem.message)}${wait}`;
    const again = h("button", { type: "button" }, "Start over");
    again.addEventListener("click", () => signIn());
    return h(
      "section",
      { class: "step", "data-kind": "failure", "aria-labelledby": "failure-heading" },
      h("h2", { id: "failure-heading", tabindex: "-1" }, heading),
      h("p", { class: "problem", role: "alert" }, text),
      h("div", { class: "actions" }, again),
    );
  };

  const signIn = () => {
    flow?.close();
    flow = undefined;
    const attempt = ++attempts;
    root.replaceChildren(h("p", { class: "quiet" }, "Connecting…"));
    const handlers: FlowHandlers = {
      onStep(view, current) {
        if (attempt !== attempts) return current.close();
        flow = current;
        if (view.kind === "session") {
          sessions.save({ userId: view.userId, token: view.sessionToken });
          flow = undefined;
          showAccount();
          return;
        }
        show(
          renderStep(view, {
            choose: current.choose,
            submit: current.submit,
            back: current.back,
            startOver: signIn,
            announce,
            ceremony: () => signInAssertion(clients.passkey, current.authId),
          }),
        );
      },
      onEnd(problem) {
        if (attempt !== attempts) return;
        show(failure(problem ?? expired, "Sign-in ended"));
      },
    };
    // Passkeys are announced only where the browser has WebAuthn; cadenza
    // offers the step only to origins its passkeys are valid on.
    beginFlow(clients.auth, handlers, passkeysSupported() ? ["passkey"] : []).then(
      (f) => {
        if (attempt === attempts) flow = f;
        else f.close();
      },
      (err: unknown) => {
        if (attempt === attempts) show(failure(problemOf(err), "Cannot sign in"));
      },
    );
  };

  const showAccount = () => {
    const session = sessions.load();
    if (!session) return signIn();
    const auth = withSession(session.token);
    const actions: AccountActions = {
      list: async () => (await clients.account.listSessions({}, auth)).sessions,
      revoke: async (sessionId) => {
        await clients.account.revokeSession({ id: sessionId }, auth);
      },
      revokeOthers: async () => (await clients.account.revokeOtherSessions({}, auth)).revoked,
      logout: async () => {
        await clients.account.logout({}, auth);
      },
      signedOut: (message) => {
        sessions.clear();
        announce(message);
        signIn();
      },
      announce,
    };
    const passkeys = renderPasskeys({
      supported: passkeysSupported(),
      list: async () => (await clients.account.listPasskeys({}, auth)).passkeys,
      secondFactorOn: async () => (await clients.account.getSecondFactor({}, auth)).totpEnabled,
      add: (password, code, name) => registerPasskey(clients.account, auth, password, code, name),
      remove: async (passkeyId) => {
        await clients.account.deletePasskey({ passkeyId }, auth);
      },
      signedOut: actions.signedOut,
      announce,
    });
    show(renderAccount({ userId: session.userId, server: config.server }, actions, passkeys));
  };

  showAccount();
}
