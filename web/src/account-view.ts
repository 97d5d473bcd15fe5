import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Session } from "../../src/gen/cadenza/account/v1/account_pb.js";
import { h, uid } from "./dom.js";
import { isBlankSession, problemOf, sentence } from "./problems.js";

/** The account page's calls, on the session the page holds. */
export interface AccountActions {
  list(): Promise<readonly Session[]>;
  revoke(sessionId: string): Promise<void>;
  /** Ends every other session; resolves to how many ended. */
  revokeOthers(): Promise<number>;
  logout(): Promise<void>;
  /** The page's session is gone (logged out, revoked elsewhere, expired). */
  signedOut(message: string): void;
  announce(text: string): void;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function time(ts: Timestamp | undefined): HTMLElement | string {
  if (!ts) return "—";
  const date = timestampDate(ts);
  return h("time", { datetime: date.toISOString() }, dateFormat.format(date));
}

/**
 * The signed-in page: the user ID and when this session ends, the user's
 * sessions (cadenza.account.v1.AccountService), a way to end any other one or
 * all of them, and logging out.
 */
export function renderAccount(
  info: { readonly userId: string; readonly server: string },
  actions: AccountActions,
  /** More of the account, below the sessions (the passkeys), with calls of its own. */
  extra?: HTMLElement,
): HTMLElement {
  const headingId = uid("account");
  const problem = h("p", { class: "problem", role: "alert", "aria-atomic": "true" });
  const expiry = h("dd", { "data-field": "expires" }, "…");
  const rows = h("tbody");
  const table = h(
    "table",
    { class: "sessions" },
    h("caption", {}, "Your sessions, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Signed in", "Last used", "Ends", "From", "Browser", ""].map((t) =>
          h(
            "th",
            { scope: "col" },
            t === "" ? h("span", { class: "visually-hidden" }, "Action") : t,
          ),
        ),
      ),
    ),
    rows,
  );
  const others = h("button", { type: "button", class: "secondary" }, "End all other sessions");
  const logout = h("button", { type: "button" }, "Log out");
  const section = h(
    "section",
    { class: "account", "aria-labelledby": headingId, "data-kind": "session" },
    h("h2", { id: headingId, tabindex: "-1" }, "Signed in"),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "User ID"),
      h("dd", { "data-field": "user-id" }, info.userId),
      h("dt", {}, "This session ends"),
      expiry,
      h("dt", {}, "Server"),
      h("dd", {}, info.server),
    ),
    problem,
    table,
    h("div", { class: "actions" }, logout, others),
    extra,
  );

  const buttons = () => [...section.querySelectorAll("button")].filter((b) => !extra?.contains(b));
  /** Runs a call with every button disabled; a dead session signs out, other errors show. */
  const run = async (call: () => Promise<void>) => {
    problem.textContent = "";
    for (const b of buttons()) b.disabled = true;
    try {
      await call();
    } catch (err) {
      const p = problemOf(err);
      if (isBlankSession(p)) {
        actions.signedOut("Your session has ended: sign in again.");
        return;
      }
      problem.textContent = p.unreachable
        ? "The server could not be reached: try again."
        : sentence(p.message);
    } finally {
      for (const b of buttons()) b.disabled = false;
    }
  };

  const refresh = async () => {
    const sessions = await actions.list();
    const current = sessions.find((s) => s.current);
    expiry.replaceChildren(time(current?.expiresAt));
    rows.replaceChildren(
      ...sessions.map((s) => {
        const action = s.current
          ? h("span", { class: "current" }, "This session")
          : h(
              "button",
              { type: "button", class: "secondary", "data-session": s.sessionId },
              "End session",
              h(
                "span",
                { class: "visually-hidden" },
                ` from ${s.clientAddress || "an unknown address"}`,
              ),
            );
        if (!s.current) {
          action.addEventListener("click", () =>
            run(async () => {
              await actions.revoke(s.sessionId);
              await refresh();
              actions.announce("That session has ended.");
            }),
          );
        }
        return h(
          "tr",
          { "data-current": s.current ? "true" : undefined },
          h("td", {}, time(s.createdAt)),
          h("td", {}, time(s.lastUsedAt)),
          h("td", {}, time(s.expiresAt)),
          h("td", {}, s.clientAddress || "—"),
          h("td", { class: "agent" }, s.userAgent || "—"),
          h("td", {}, action),
        );
      }),
    );
    others.hidden = !sessions.some((s) => !s.current);
  };

  others.addEventListener("click", () =>
    run(async () => {
      const n = await actions.revokeOthers();
      await refresh();
      actions.announce(n === 1 ? "1 other session has ended." : `${n} other sessions have ended.`);
    }),
  );
  logout.addEventListener("click", () =>
    run(async () => {
      await actions.logout();
      actions.signedOut("You have logged out.");
    }),
  );
  run(refresh).catch(() => {});
  return section;
}
