import { describe, expect, it } from "vitest";
import { type ConfigError, loadConfig } from "../src/config.js";
import { databaseUrlSecrets, redactDatabaseUrl } from "../src/database-url.js";

describe("DATABASE_URL in messages", () => {
  it.each([
    ["postgres://cadenza:s3cret@db:5432/cadenza", "postgres://cadenza:***@db:5432/cadenza"],
    ["postgresql://:s3cret@db/cadenza", "postgresql://:***@db/cadenza"],
    ["postgres://cadenza@db/cadenza", "postgres://cadenza@db/cadenza"],
    [
      "postgres://u@db/c?password=s3cret&sslmode=require",
      "postgres://u@db/c?password=***&sslmode=require",
    ],
    ["postgres://u:s3cret@[::1/broken", "postgres://u:***@[::1/broken"],
  ])("%s is shown as %s", (url, shown) => expect(redactDatabaseUrl(url)).toBe(shown));

  it("knows the password as written and decoded", () => {
    expect(databaseUrlSecrets("postgres://u:p%40ss@db/c")).toEqual(["p%40ss", "p@ss"]);
  });

  it("is not echoed with its password when it is not a postgres URL", () => {
    const error = (() => {
      try {
        loadConfig({ DATABASE_URL: "mysql://root:s3cret@db/x", KEY_ENCRYPTION_KEY: "s3cret-key" });
      } catch (err) {
        return err as ConfigError;
      }
      throw new Error("loadConfig accepted it");
    })();
    expect(error.message).toContain("DATABASE_URL=mysql://root:***@db/x");
    expect(error.message).toContain("KEY_ENCRYPTION_KEY=<hidden>");
    expect(error.message).not.toContain("s3cret");
  });
});
