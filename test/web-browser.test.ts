import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code, createClient } from "@connectrpc/connect";
import { pino } from "pino";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AccountService } from "../src/gen/cadenza/account/v1/account_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { contentSecurityPolicy } from "../src/server/web-ui.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import {
  buildWebClient,
  chromiumMissing,
  launchChromium,
  type SeenRequest,
  startStaticServer,
} from "./helpers/browser.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { expectRpcError } from "./helpers/errors.js";
import { login, newUser, register, type TestUser } from "./helpers/flow.js";
import { transportFactory } from "./helpers/server.js";
import { startSmtpServer } from "./helpers/smtp.js";

/**
 * The reference web client (web/) in a real browser: Debian's headless
 * Chromium driven by playwright-core, against a cadenza started in process
 * with the page built fresh from web/ and served by cadenza itself, under
 * the CSP cadenza sends. A user registers (from the keyboard alone), logs out
 * and in, mistypes a password until throttled, steps back, resets a password
 * with the code from the in-process SMTP server, and lists and ends
 * sessions; then the same page, hosted on a second loopback origin, works
 * when CORS_ORIGINS lists that origin and is refused when it does not.
 *
 * Each main screen is saved as a PNG in test-output/web-client/ (or
 * WEB_SCREENSHOTS_DIR): CI output, not committed.
 */

const missing = chromiumMissing();
if (missing && process.env.CI) {
  throw new Error(`${missing}: CI runs the browser tests (.ci/run installs Debian's chromium)`);
}
if (missing) console.warn(`test/web-browser.test.ts: the browser tests are skipped: ${missing}`);

const screenshots =
  process.env.WEB_SCREENSHOTS_DIR?.trim() ||
  fileURLToPath(new URL("../test-output/web-client/", import.meta.url));

/** What one page did that the tests check for every page: where it went, what it broke. */
interface PageWatch {
  readonly requests: string[];
  readonly violations: string[];
  readonly errors: string[];
  /** Resolves with the first CSP violation, so far or to come, that `matches`. */
  violation(matches: (text: string) => boolean): Promise<string>;
}

describe.skipIf(missing !== undefined)("the web client in Chromium", () => {
  let built: string;
  const transports = transportFactory();
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  let smtp: Awaited<ReturnType<typeof startSmtpServer>>;
  /** A copy of the page on another origin that CORS_ORIGINS lists, and one it does not. */
  let allowed: Awaited<ReturnType<typeof startStaticServer>>;
  let refused: Awaited<ReturnType<typeof startStaticServer>>;
  let browser: Awaited<ReturnType<typeof launchChromium>>;
  let context: BrowserContext;
  const watches = new Map<Page, PageWatch>();
  let auth: ReturnType<typeof createClient<typeof AuthService>>;
  let account: ReturnType<typeof createClient<typeof AccountService>>;

  beforeAll(async () => {
    mkdirSync(screenshots, { recursive: true });
    built = mkdtempSync(join(tmpdir(), "cadenza-web-build-"));
    const [, mail, db, chromium] = await Promise.all([
      buildWebClient(built),
      startSmtpServer(),
      pglite.open(),
      launchChromium(),
    ]);
    smtp = mail;
    database = db;
    browser = chromium;
    context = browser.context;
    // The copies' CSP names cadenza's origin, known once it listens.
    const copyHeaders = () => ({ "content-security-policy": contentSecurityPolicy([server.url]) });
    [allowed, refused] = await Promise.all([
      startStaticServer(built, copyHeaders),
      startStaticServer(built, copyHeaders),
    ]);
    ctx = await createAppContext(
      testConfig({
        SMTP_URL: smtp.url,
        CORS_ORIGINS: allowed.origin,
        // One failed login, then an hour's wait: the throttle the page must show.
        LOGIN_FAILURES_BEFORE_DELAY: "1",
        LOGIN_FIRST_DELAY: "1h",
        LOGIN_MAX_DELAY: "1h",
        SHUTDOWN_GRACE: "1s",
      }),
      {
        db: database.db,
        hasher: fastHasher,
        logger: pino({ level: "silent" }),
        background: false,
        webUiDir: built,
      },
    );
    server = await startServer(ctx);
    const transport = transports.create("connect-json/http1", server.url);
    auth = createClient(AuthService, transport);
    account = createClient(AccountService, transport);
  });

  afterAll(async () => {
    await browser?.close();
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await Promise.all([allowed?.close(), refused?.close(), smtp?.close()]);
    await database?.close();
    if (built) rmSync(built, { recursive: true, force: true });
  });

  /** A new tab (its own sessionStorage), watched for requests, CSP violations and errors. */
  async function open(url: string): Promise<Page> {
    const page = await context.newPage();
    // Under the test's own timeout, so a step that never comes fails with Playwright's call log.
    page.setDefaultTimeout(10_000);
    const waiting = new Set<(text: string) => void>();
    const violations: string[] = [];
    const watch: PageWatch = {
      requests: [],
      violations,
      errors: [],
      violation: (matches) =>
        new Promise((resolve) => {
          const seen = violations.find(matches);
          if (seen !== undefined) return resolve(seen);
          const wake = (text: string) => {
            if (!matches(text)) return;
            waiting.delete(wake);
            resolve(text);
          };
          waiting.add(wake);
        }),
    };
    watches.set(page, watch);
    page.on("request", (r) => watch.requests.push(r.url()));
    page.on("pageerror", (e) => watch.errors.push(e.message));
    page.on("console", (m) => {
      if (!/Content Security Policy|Trusted Type/i.test(m.text())) return;
      violations.push(m.text());
      for (const wake of [...waiting]) wake(m.text());
    });
    await page.goto(url);
    return page;
  }

  const shot = (page: Page, name: string) =>
    page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });

  /** Waits for the step (or page) whose heading is `name`. */
  const step = (page: Page, name: string) =>
    page.getByRole("heading", { level: 2, name, exact: true }).waitFor();

  const button = (page: Page, name: string) => page.getByRole("button", { name, exact: true });

  /** What the status region (polite announcements) says, once it says `text`. */
  const announced = (page: Page, text: string) =>
    page.locator("#status", { hasText: text }).waitFor({ state: "attached" });

  /** The form's own problem (the live region of the step as a whole). */
  const formProblem = (page: Page) => page.locator("section.step [role=alert]");

  // The page-side code below goes through locators: the test program has no DOM types.

  /** The focused element: an input by its label's text, anything else by its own. */
  async function focused(page: Page): Promise<string> {
    const el = page.locator(":focus");
    const tag: string = await el.evaluate((e) => e.tagName.toLowerCase());
    if (tag !== "input") return `${tag}: ${await el.textContent()}`;
    const id = await el.getAttribute("id");
    return `input: ${await page.locator(`label[for="${id}"]`).textContent()}`;
  }

  /** Every input has a label with text, and every button a name. */
  async function expectAccessible(page: Page) {
    const inputs: string[] = await page
      .locator("input")
      .evaluateAll((els) =>
        els.filter((i) => !i.labels?.[0]?.textContent?.trim()).map((i) => `input ${i.name}`),
      );
    const buttons: string[] = await page
      .locator("button")
      .evaluateAll((els) => els.filter((b) => !b.textContent?.trim()).map((b) => b.outerHTML));
    expect([...inputs, ...buttons]).toEqual([]);
  }

  /** Logs in through the page's forms (with the mouse; the keyboard has its own test). */
  async function logIn(page: Page, user: Pick<TestUser, "email" | "password">) {
    await step(page, "Welcome");
    await button(page, "Log in").click();
    await step(page, "Log in");
    await expectAccessible(page);
    await page.getByLabel("Email", { exact: true }).fill(user.email);
    await page.getByLabel("Password", { exact: true }).fill(user.password);
    await button(page, "Continue").click();
  }

  const sessionRows = (page: Page) => page.locator("table.sessions tbody tr");

  const user = newUser();

  it("registers from the keyboard alone, and shows the account", async () => {
    const page = await open(server.url);
    await step(page, "Welcome");
    await shot(page, "1-welcome");
    // The first option has the focus; Back is not offered on the first step.
    expect(await focused(page)).toBe("button: Log in");
    expect(await button(page, "Back").count()).toBe(0);
    await page.keyboard.press("Tab");
    expect(await focused(page)).toBe("button: Register");
    await page.keyboard.press("Enter");

    await step(page, "Create an account");
    await expectAccessible(page);
    expect(await focused(page)).toBe("input: Email");
    expect(
      await page
        .locator("form input")
        .evaluateAll((els) => els.map((e) => [e.getAttribute("name"), e.getAttribute("type")])),
    ).toEqual([
      ["email", "email"],
      ["username", "text"],
      ["password", "password"],
    ]);
    await page.keyboard.type(user.email);
    await page.keyboard.press("Tab");
    await page.keyboard.type(user.username);
    await page.keyboard.press("Tab");
    await page.keyboard.type("short");
    await page.keyboard.press("Enter");
    // The rule that failed, next to the password, which has the focus again.
    const password = page.getByLabel("Password", { exact: true });
    await page.locator("input[aria-invalid=true]").waitFor();
    expect(await password.getAttribute("aria-invalid")).toBe("true");
    const describedBy = (await password.getAttribute("aria-describedby")) ?? "";
    const message = page.locator(`[id="${describedBy}"]`);
    expect(await message.textContent()).toMatch(/password/i);
    expect(await message.getAttribute("aria-live")).toBe("assertive");
    expect(await focused(page)).toBe("input: Password");
    await shot(page, "2-register-invalid-password");
    await page.keyboard.press("ControlOrMeta+A");
    await page.keyboard.type(user.password);
    await page.keyboard.press("Enter");

    await step(page, "Signed in");
    await sessionRows(page).first().waitFor();
    const { rows } = await database.db.query<{ id: string }>(
      "SELECT id::text AS id FROM users WHERE email = $1",
      [user.email],
    );
    expect(await page.locator("[data-field=user-id]").textContent()).toBe(rows[0]?.id);
    // This session's end: SESSION_IDLE_TTL (30 days) from now.
    const ends = await page.locator("[data-field=expires] time").getAttribute("datetime");
    const days = (Date.parse(ends ?? "") - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(29.9);
    expect(days).toBeLessThanOrEqual(30);
    expect(await sessionRows(page).count()).toBe(1);
    expect(await sessionRows(page).first().textContent()).toContain("This session");
    await shot(page, "3-signed-in");
  });

  it("logs out, then logs in again", async () => {
    const page = await open(server.url);
    await logIn(page, user);
    await step(page, "Signed in");
    await sessionRows(page).first().waitFor();
    await button(page, "Log out").click();
    await announced(page, "You have logged out.");
    await step(page, "Welcome");
    await logIn(page, user);
    await step(page, "Signed in");
    await sessionRows(page).first().waitFor();
    // The first page's session and this one: the logged-out one is gone.
    expect(await sessionRows(page).count()).toBe(2);
  });

  it("shows a wrong password on the form, then the wait when throttled", async () => {
    const victim = newUser();
    await register(auth, victim);
    const page = await open(server.url);
    await logIn(page, { email: victim.email, password: "not the password" });
    await formProblem(page).filter({ hasText: "wrong email or password" }).waitFor();
    // Which of the two was wrong is not said, so no field is marked.
    expect(await page.locator("input[aria-invalid=true]").count()).toBe(0);
    await shot(page, "4-wrong-password");

    await button(page, "Continue").click();
    await formProblem(page).filter({ hasText: "try again in 1 hour" }).waitFor();
    expect(await formProblem(page).textContent()).toMatch(
      /^Too many failed logins for this account/,
    );
    const wait = page.locator("form button[type=submit]");
    expect(await wait.isDisabled()).toBe(true);
    expect(await wait.textContent()).toBe("Wait 1 hour");
    await shot(page, "5-throttled");
  });

  it("goes back a step wherever the step allows it", async () => {
    const page = await open(server.url);
    await step(page, "Welcome");
    await button(page, "Log in").click();
    await step(page, "Log in");
    await button(page, "Back").click();
    await step(page, "Welcome");
    await button(page, "Other options").click();
    await step(page, "Other options");
    await button(page, "Reset password").click();
    await step(page, "Reset your password");
    // From the keyboard: Back is the form's last control.
    await page.getByLabel("Email", { exact: true }).focus();
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    expect(await focused(page)).toBe("button: Back");
    await page.keyboard.press("Enter");
    await step(page, "Other options");
    await button(page, "Back").click();
    await step(page, "Welcome");
    expect(await button(page, "Back").count()).toBe(0);
  });

  const newPassword = "a new password from the browser";

  it("resets a password with the emailed code", async () => {
    const page = await open(server.url);
    await step(page, "Welcome");
    await button(page, "Other options").click();
    await button(page, "Reset password").click();
    await step(page, "Reset your password");
    await expectAccessible(page);
    await page.getByLabel("Email", { exact: true }).fill(user.email);
    await button(page, "Continue").click();

    await step(page, "Choose a new password");
    await expectAccessible(page);
    const code = page.getByLabel("Code", { exact: true });
    expect(await code.getAttribute("type")).toBe("password");
    expect(await code.getAttribute("autocomplete")).toBe("one-time-code");
    expect(
      await page.getByLabel("New password", { exact: true }).getAttribute("autocomplete"),
    ).toBe("new-password");
    // A wrong code is shown next to the code.
    await code.fill("WRON-GCOD");
    await page.getByLabel("New password", { exact: true }).fill(newPassword);
    await button(page, "Continue").click();
    await page.locator("input[name=token][aria-invalid=true]").waitFor();
    await shot(page, "6-reset-wrong-code");

    const mail = await smtp.next(user.email);
    await code.fill(mail.code ?? "");
    await button(page, "Continue").click();
    await step(page, "Done");
    await button(page, "Back to the start").click();
    await logIn(page, { email: user.email, password: newPassword });
    await step(page, "Signed in");
    await shot(page, "7-reset-signed-in");
  });

  it("lists sessions, ends one, then all others, and notices its own end", async () => {
    const owner = newUser();
    const first = await register(auth, owner);
    const second = await login(auth, owner.email, owner.password);
    const page = await open(server.url);
    await logIn(page, owner);
    await step(page, "Signed in");
    await sessionRows(page).nth(2).waitFor();
    expect(await sessionRows(page).count()).toBe(3);
    await expectAccessible(page);
    await shot(page, "8-sessions");

    const alive = async (token: string) =>
      account.listSessions({}, { headers: { authorization: token } }).then(
        () => true,
        () => false,
      );
    await page.locator("table.sessions button").first().click();
    await announced(page, "That session has ended.");
    expect(await sessionRows(page).count()).toBe(2);
    expect([await alive(first.sessionToken), await alive(second.sessionToken)].sort()).toEqual([
      false,
      true,
    ]);

    await button(page, "End all other sessions").click();
    await announced(page, "1 other session has ended.");
    expect(await sessionRows(page).count()).toBe(1);
    expect(await button(page, "End all other sessions").isHidden()).toBe(true);
    expect([await alive(first.sessionToken), await alive(second.sessionToken)]).toEqual([
      false,
      false,
    ]);

    // Logged out elsewhere: the page finds out, and offers to sign in again.
    const stored = JSON.parse(await page.evaluate<string>("JSON.stringify(sessionStorage)"));
    const key = Object.keys(stored).find((k) => k.startsWith("cadenza.session"));
    const { token } = JSON.parse(stored[key ?? ""] ?? "{}") as { token?: string };
    await account.logout({}, { headers: { authorization: token ?? "" } });
    await expectRpcError(
      account.listSessions({}, { headers: { authorization: token ?? "" } }),
      Code.Unauthenticated,
      "h.blank-session",
    );
    await page.reload();
    await announced(page, "Your session has ended: sign in again.");
    await step(page, "Welcome");
  });

  it.each([
    ["gRPC-Web", ""],
    ["Connect", "&protocol=connect"],
  ])("works from another origin that CORS_ORIGINS lists, over %s", async (_, protocol) => {
    const page = await open(
      `${allowed.origin}/?server=${encodeURIComponent(server.url)}${protocol}`,
    );
    expect(await page.locator("#server").textContent()).toContain(server.url);
    await logIn(page, { email: user.email, password: newPassword });
    await step(page, "Signed in");
    await sessionRows(page).first().waitFor();
    if (protocol === "") await shot(page, "9-another-origin");
    // The page came from the copy; every call went to cadenza.
    const watch = watches.get(page);
    const calls = (watch?.requests ?? []).filter((u) => u.includes("Service/"));
    expect(calls.every((u) => u.startsWith(`${server.url}/`))).toBe(true);
    // The sign-in and the account page's session list among them.
    expect(calls.map((u) => new URL(u).pathname)).toEqual(
      expect.arrayContaining([
        "/protocol.auth.v1.AuthService/BeginAuth",
        "/protocol.auth.v1.AuthService/NextStep",
        "/cadenza.account.v1.AccountService/ListSessions",
      ]),
    );
  });

  it("is refused from an origin CORS_ORIGINS does not list", async () => {
    const page = await open(`${refused.origin}/?server=${encodeURIComponent(server.url)}`);
    await step(page, "Cannot sign in");
    const text = await page.locator("[role=alert]").textContent();
    expect(text).toContain("CORS_ORIGINS");
    expect(text).toContain(refused.origin);
    await shot(page, "10-refused-origin");
  });

  it("talks to no server but cadenza's own origin when cadenza serves it (CSP connect-src)", async () => {
    const before = allowed.seen.length;
    const page = await open(`${server.url}/?server=${encodeURIComponent(allowed.origin)}`);
    await step(page, "Cannot sign in");
    const watch = watches.get(page);
    expect(await watch?.violation((v) => v.includes("connect-src"))).toContain(allowed.origin);
    // The browser sent nothing there: not even a preflight.
    const reached: SeenRequest[] = allowed.seen.slice(before);
    expect(reached).toEqual([]);
    watches.delete(page);
  });

  it("made no request off loopback's three origins, broke no CSP rule and threw nothing", () => {
    const origins = new Set([server.url, allowed.origin, refused.origin]);
    const all = [...watches.values()];
    expect(all.length).toBeGreaterThan(5);
    const elsewhere = all.flatMap((w) => w.requests).filter((u) => !origins.has(new URL(u).origin));
    expect(elsewhere).toEqual([]);
    expect(all.flatMap((w) => w.violations)).toEqual([]);
    expect(all.flatMap((w) => w.errors)).toEqual([]);
  });
});
