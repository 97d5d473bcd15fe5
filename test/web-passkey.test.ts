import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { Secret, TOTP } from "otpauth";
import { pino } from "pino";
import type { CDPSession, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppContext, createAppContext } from "../src/app-context.js";
import { AccountService } from "../src/gen/cadenza/account/v1/account_pb.js";
import { AuthService } from "../src/gen/protocol/auth/v1/auth_pb.js";
import { type RunningServer, startServer } from "../src/server/listener.js";
import { fastHasher, testConfig } from "./helpers/app.js";
import { buildWebClient, chromiumMissing, launchChromium } from "./helpers/browser.js";
import { pglite, type TestDatabase } from "./helpers/databases.js";
import { newUser, register } from "./helpers/flow.js";
import { onFreePort, transportFactory } from "./helpers/server.js";

/**
 * Passkeys in the reference web client, in Debian's headless Chromium with
 * its virtual authenticator (Chrome DevTools Protocol `WebAuthn` domain,
 * through playwright-core): a user adds a passkey from the account page,
 * logs out, and signs in with it from the keyboard; a browser without
 * WebAuthn, a page on an origin passkeys are not valid on, and a generic
 * client are never offered the passkey step.
 *
 * WebAuthn needs a secure context and a domain: Chromium treats
 * http://localhost as secure, but refuses an IP address such as 127.0.0.1
 * as a relying party ("This is an invalid domain"). So the page is opened
 * at http://localhost:<port> and SERVER_ID is localhost:<port>, from which
 * cadenza derives the RP ID `localhost` and the origin http://localhost:<port>.
 */

const missing = chromiumMissing();
if (missing && process.env.CI) {
  throw new Error(`${missing}: CI runs the browser tests (.ci/run installs Debian's chromium)`);
}
if (missing) console.warn(`test/web-passkey.test.ts: the browser tests are skipped: ${missing}`);

const screenshots =
  process.env.WEB_SCREENSHOTS_DIR?.trim() ||
  fileURLToPath(new URL("../test-output/web-client/", import.meta.url));

describe.skipIf(missing !== undefined)("passkeys in the web client, in Chromium", () => {
  let built: string;
  const transports = transportFactory();
  let database: TestDatabase;
  let ctx: AppContext;
  let server: RunningServer;
  let browser: Awaited<ReturnType<typeof launchChromium>>;
  let origin: string;
  let auth: ReturnType<typeof createClient<typeof AuthService>>;
  const requests: string[] = [];
  const violations: string[] = [];
  const errors: string[] = [];

  beforeAll(async () => {
    mkdirSync(screenshots, { recursive: true });
    built = mkdtempSync(join(tmpdir(), "cadenza-web-build-"));
    const [, db, chromium] = await Promise.all([
      buildWebClient(built),
      pglite.open(),
      launchChromium(),
    ]);
    database = db;
    browser = chromium;
    // Its SERVER_ID names its port, so the port is chosen before it listens.
    await onFreePort(async (port) => {
      origin = `http://localhost:${port}`;
      ctx = await createAppContext(
        testConfig({ PORT: String(port), SERVER_ID: `localhost:${port}`, SHUTDOWN_GRACE: "1s" }),
        {
          db: database.db,
          hasher: fastHasher,
          logger: pino({ level: "silent" }),
          background: false,
          webUiDir: built,
        },
      );
      server = await startServer(ctx).catch(async (err: unknown) => {
        await ctx.close();
        throw err;
      });
    });
    auth = createClient(AuthService, transports.create("connect-json/http1", server.url));
  });

  afterAll(async () => {
    await browser?.close();
    transports.closeAll();
    await server?.close();
    await ctx?.close();
    await database?.close();
    if (built) rmSync(built, { recursive: true, force: true });
  });

  /** A new tab, watched for requests, CSP violations and errors; `init` runs before the page's scripts. */
  async function open(url: string, init?: string): Promise<Page> {
    const page = await browser.context.newPage();
    page.setDefaultTimeout(10_000);
    page.on("request", (r) => requests.push(r.url()));
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => {
      if (/Content Security Policy|Trusted Type/i.test(m.text())) violations.push(m.text());
    });
    if (init) await page.addInitScript(init);
    await page.goto(url);
    return page;
  }

  /** The tab's virtual authenticator: a platform one with resident keys and user verification. */
  async function virtualAuthenticator(page: Page) {
    const cdp: CDPSession = await page.context().newCDPSession(page);
    await cdp.send("WebAuthn.enable");
    const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
      options: {
        protocol: "ctap2",
        transport: "internal",
        hasResidentKey: true,
        hasUserVerification: true,
        isUserVerified: true,
        automaticPresenceSimulation: true,
      },
    });
    return {
      credentials: async () =>
        (await cdp.send("WebAuthn.getCredentials", { authenticatorId })).credentials,
      clear: () => cdp.send("WebAuthn.clearCredentials", { authenticatorId }),
    };
  }

  const shot = (page: Page, name: string) =>
    page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
  const step = (page: Page, name: string) =>
    page.getByRole("heading", { level: 2, name, exact: true }).waitFor();
  const button = (page: Page, name: string) => page.getByRole("button", { name, exact: true });
  const announced = (page: Page, text: string) =>
    page.locator("#status", { hasText: text }).waitFor({ state: "attached" });
  const options = (page: Page) =>
    page
      .locator(".options button")
      .evaluateAll((els) => els.map((e) => e.getAttribute("data-option")));
  async function focused(page: Page): Promise<string> {
    const el = page.locator(":focus");
    return `${await el.evaluate((e) => e.tagName.toLowerCase())}: ${await el.textContent()}`;
  }

  const user = newUser();

  it("adds a passkey from the account page, then signs in with it from the keyboard", async () => {
    const { userId } = await register(auth, user);
    const page = await open(`${origin}/`);
    const authenticator = await virtualAuthenticator(page);

    // The browser has WebAuthn and the origin is cadenza's own: the option is there.
    await step(page, "Welcome");
    expect(await options(page)).toEqual(["login", "passkey", "register", "other-options"]);
    await button(page, "Log in").click();
    await step(page, "Log in");
    await page.getByLabel("Email", { exact: true }).fill(user.email);
    await page.getByLabel("Password", { exact: true }).fill(user.password);
    await button(page, "Continue").click();
    await step(page, "Signed in");

    const section = page.locator("section.passkeys-section");
    await section.getByText("You have no passkeys yet.").waitFor();
    // No second factor on this account: no code is asked for.
    expect(
      await section
        .getByLabel("Code from your authenticator app, or a recovery code", { exact: true })
        .isVisible(),
    ).toBe(false);
    // The password is asked again before a way in is added; a wrong one is said so.
    await page.getByLabel("Your password", { exact: true }).fill("not the password");
    await page
      .getByLabel("Name for the new passkey (optional)", { exact: true })
      .fill("Test laptop");
    await button(page, "Add a passkey").click();
    await section.locator("[role=alert]", { hasText: "Wrong password." }).waitFor();
    expect(await authenticator.credentials()).toEqual([]);
    await page.getByLabel("Your password", { exact: true }).fill(user.password);
    await button(page, "Add a passkey").click();
    await announced(page, "The passkey Test laptop was added");
    const item = section.locator("li", { hasText: "Test laptop" });
    await item.waitFor();
    expect(await item.textContent()).toContain("last used never");
    const [credential] = await authenticator.credentials();
    expect(credential).toMatchObject({ isResidentCredential: true, rpId: "localhost" });
    expect((await ctx.passkeys.list(userId)).map((p) => p.passkeyId)).toEqual([
      Buffer.from(credential?.credentialId ?? "", "base64").toString("base64url"),
    ]);
    await shot(page, "11-passkey-added");

    await button(page, "Log out").click();
    await announced(page, "You have logged out.");
    await step(page, "Welcome");
    // From the keyboard: the second option, then the one button of its step.
    expect(await focused(page)).toBe("button: Log in");
    await page.keyboard.press("Tab");
    expect(await focused(page)).toBe("button: Sign in with a passkey");
    await page.keyboard.press("Enter");
    await step(page, "Sign in with a passkey");
    expect(await page.locator("form input").count()).toBe(0);
    expect(await focused(page)).toBe("button: Use a passkey");
    await shot(page, "12-passkey-sign-in");
    await page.keyboard.press("Enter");

    await step(page, "Signed in");
    expect(await page.locator("[data-field=user-id]").textContent()).toBe(String(userId));
    await section.locator("li", { hasText: "Test laptop" }).waitFor();
    expect(await section.locator("li").textContent()).not.toContain("last used never");
    await shot(page, "13-passkey-signed-in");

    // Removed, it is gone from the list and from the server.
    await section.getByRole("button", { name: "Remove the passkey Test laptop" }).click();
    await announced(page, "The passkey Test laptop was removed.");
    await section.getByText("You have no passkeys yet.").waitFor();
    expect(await ctx.passkeys.list(userId)).toEqual([]);
    await page.close();
  });

  it("on an account with TOTP on, asks for a code from the app before it adds a passkey", async () => {
    const second = newUser();
    const { sessionToken, userId } = await register(auth, second);
    const account = createClient(
      AccountService,
      transports.create("connect-json/http1", server.url),
    );
    const headers = { authorization: sessionToken };
    const { secret } = await account.beginTotpEnrollment({}, { headers });
    const { recoveryCodes } = await account.confirmTotpEnrollment(
      { code: TOTP.generate({ secret: Secret.fromBase32(secret) }) },
      { headers },
    );
    // The confirming code's time step is used, so the page works with recovery codes.
    const [forLogin, forPasskey] = recoveryCodes;
    const page = await open(`${origin}/`);
    const authenticator = await virtualAuthenticator(page);
    await authenticator.clear();
    await step(page, "Welcome");
    await button(page, "Log in").click();
    await page.getByLabel("Email", { exact: true }).fill(second.email);
    await page.getByLabel("Password", { exact: true }).fill(second.password);
    await button(page, "Continue").click();
    await step(page, "Two-step verification");
    const code = page.getByLabel("Code from your authenticator app, or a recovery code", {
      exact: true,
    });
    await code.fill(forLogin ?? "");
    await button(page, "Continue").click();
    await step(page, "Signed in");

    const section = page.locator("section.passkeys-section");
    const passkeyCode = section.getByLabel("Code from your authenticator app, or a recovery code", {
      exact: true,
    });
    await passkeyCode.waitFor();
    await page.getByLabel("Your password", { exact: true }).fill(second.password);
    await button(page, "Add a passkey").click();
    await section.locator("[role=alert]", { hasText: "TOTP is on for this account" }).waitFor();
    expect(await authenticator.credentials()).toEqual([]);
    await passkeyCode.fill(forPasskey ?? "");
    await button(page, "Add a passkey").click();
    await announced(page, "The passkey Passkey was added");
    expect(await authenticator.credentials()).toHaveLength(1);
    expect(await ctx.passkeys.list(userId)).toHaveLength(1);
    // The recovery code was spent.
    expect((await account.getSecondFactor({}, { headers })).recoveryCodesLeft).toBe(8);
    await shot(page, "14-passkey-with-totp");
    await page.close();
  });

  it("says so when no passkey is used, and the password still works", async () => {
    const page = await open(`${origin}/`);
    const authenticator = await virtualAuthenticator(page);
    await authenticator.clear();
    await step(page, "Welcome");
    await button(page, "Sign in with a passkey").click();
    await step(page, "Sign in with a passkey");
    await button(page, "Use a passkey").click();
    await page.locator("section.step [role=alert]", { hasText: "No passkey was used" }).waitFor();
    expect(await button(page, "Use a passkey").isEnabled()).toBe(true);
    await button(page, "Back").click();
    await step(page, "Welcome");
    await page.close();
  });

  it("never offers the passkey step where it cannot work, nor to a generic client", async () => {
    // A browser without WebAuthn announces nothing.
    const without = await open(`${origin}/`, "delete window.PublicKeyCredential;");
    await step(without, "Welcome");
    expect(await options(without)).toEqual(["login", "register", "other-options"]);
    await without.close();
    // A page on an address that passkeys of this server are not valid on
    // (an IP address: no RP ID can match it) announces, but is not offered it.
    const byAddress = await open(`${server.url}/`);
    await step(byAddress, "Welcome");
    expect(await options(byAddress)).toEqual(["login", "register", "other-options"]);
    await byAddress.close();
    // A generic client, which sends no feature header, sees Harmony's own steps.
    const { authId } = await auth.beginAuth({});
    const res = await auth.nextStep({ authId });
    expect(res.step?.step.case === "choice" && res.step.step.value.options).toEqual([
      "login",
      "register",
      "other-options",
    ]);
  });

  it("made no request off loopback, broke no CSP rule and threw nothing", () => {
    const origins = new Set([origin, server.url]);
    expect(requests.filter((u) => !origins.has(new URL(u).origin))).toEqual([]);
    expect(violations).toEqual([]);
    expect(errors).toEqual([]);
  });
});
