import { describe, expect, it } from "vitest";
import {
  loadCommonPasswords,
  validateEmail,
  validateNewPassword,
  validateUsername,
} from "../src/auth/account-rules.js";
import { HarmonyError } from "../src/errors.js";

const common = loadCommonPasswords();

function failure(fn: () => unknown): { identifier: string; message: string } {
  try {
    fn();
  } catch (err) {
    if (err instanceof HarmonyError) return { identifier: err.identifier, message: err.message };
    throw err;
  }
  throw new Error("expected a rejection");
}

describe("emails", () => {
  it("trims, keeps the case typed, and keys case-insensitively", () => {
    expect(validateEmail("  Alice@Example.ORG ")).toEqual({
      email: "Alice@Example.ORG",
      key: "alice@example.org",
    });
  });

  it.each([
    ["", /empty/],
    ["   ", /empty/],
    ["no-at-sign", /name@example.org/],
    ["two@@example.org", /name@example.org/],
    ["spaces in@example.org", /name@example.org/],
    ["a@-bad-.org", /name@example.org/],
    [`${"x".repeat(65)}@example.org`, /before @/],
    [`a@${"x".repeat(250)}.org`, /longer than 254/],
  ])("rejects %j with h.invalid-email", (email, why) => {
    const error = failure(() => validateEmail(email));
    expect(error.identifier).toBe("h.invalid-email");
    expect(error.message).toMatch(why);
  });
});

describe("usernames", () => {
  it("normalises to NFKC and keys case-insensitively", () => {
    expect(validateUsername(" Ｍｉｋｕ ")).toEqual({ username: "Miku", key: "miku" });
    expect(validateUsername("Łukasz_99").key).toBe("łukasz_99");
  });

  it.each([
    ["", /empty/],
    ["a", /2 to 32/],
    ["x".repeat(33), /2 to 32/],
    ["has space", /letters, digits/],
    ["_leading", /starting with a letter or digit/],
    ["semi;colon", /letters, digits/],
    ["zero\u200bwidth", /letters, digits/],
  ])("rejects %j with h.invalid-username", (username, why) => {
    const error = failure(() => validateUsername(username));
    expect(error.identifier).toBe("h.invalid-username");
    expect(error.message).toMatch(why);
  });
});

describe("new passwords (NIST SP 800-63B)", () => {
  const account = { email: "alice@example.org", username: "alice" };

  it("ships a list of at least 10,000 common passwords", () => {
    expect(common.size).toBeGreaterThanOrEqual(10_000);
    expect(common.has("password")).toBe(true);
  });

  it("accepts a long unusual password and returns its NFKC form", () => {
    expect(validateNewPassword("correct horse battery staple", account, common)).toBe(
      "correct horse battery staple",
    );
    expect(validateNewPassword("ｆｕｌｌｗｉｄｔｈ-pass", account, common)).toBe("fullwidth-pass");
  });

  it.each([
    ["", /empty/],
    ["short", /at least 8/],
    ["x".repeat(257), /at most 256/],
    ["password", /most commonly used/],
    ["PassWord1", /most commonly used/],
    ["qwertyuiop", /most commonly used/],
    ["Alice@Example.org", /email/],
    ["alice@example.org", /email/],
    ["ALICE", /at least 8/],
  ])("rejects %j with h.invalid-password", (password, why) => {
    const error = failure(() => validateNewPassword(password, account, common));
    expect(error.identifier).toBe("h.invalid-password");
    expect(error.message).toMatch(why);
  });

  it("rejects the username as the password", () => {
    const error = failure(() =>
      validateNewPassword(
        "LongUserName",
        { email: "x@example.org", username: "longusername" },
        common,
      ),
    );
    expect(error).toMatchObject({
      identifier: "h.invalid-password",
      message: expect.stringMatching(/username/),
    });
  });
});
