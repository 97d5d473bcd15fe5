import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/config.js";
import { dataDirProblem } from "../src/db/data-dir-lock.js";
import { checkPostgres, connectionProblem, type PostgresTarget } from "../src/db/postgres-check.js";
import { StartupError } from "../src/errors.js";
import { checkPorts, checkTls, listenFailure } from "../src/startup-checks.js";
import { describeStartupFailure } from "../src/startup-failure.js";
import { fakePostgres } from "./helpers/fake-postgres.js";
import { selfSignedCertificate } from "./helpers/server.js";

const target = (url = "postgres://cadenza:s3cret@db.example:5432/cadenza"): PostgresTarget => ({
  url,
  host: "db.example",
  port: 5432,
  database: "cadenza",
  user: "cadenza",
});
const withCode = (code: string, message = code) => Object.assign(new Error(message), { code });

describe("why DATABASE_URL cannot be used", () => {
  it.each([
    [withCode("ENOTFOUND"), 2, /host db\.example not found \(ENOTFOUND\)/],
    [withCode("EAI_AGAIN"), 2, /host db\.example not found \(EAI_AGAIN\)/],
    [withCode("ECONNREFUSED"), 1, /connection to db\.example:5432 refused/],
    [withCode("EHOSTUNREACH"), 1, /cannot reach db\.example:5432 \(EHOSTUNREACH\)/],
    [new Error("The server does not support SSL connections"), 1, /does not support SSL/],
  ])("%s: exit code %d", (err, exitCode, pattern) => {
    const problem = connectionProblem(target(), err);
    expect(problem.exitCode).toBe(exitCode);
    expect(problem.message).toMatch(
      /^DATABASE_URL=postgres:\/\/cadenza:\*\*\*@db\.example:5432\/cadenza: /,
    );
    expect(problem.message).toMatch(pattern);
    expect(problem.message).not.toContain("s3cret");
  });

  describe("from a server's answer", () => {
    const servers: { close(): Promise<void> }[] = [];
    afterAll(async () => {
      await Promise.all(servers.map((s) => s.close()));
    });

    it.each([
      [
        "28P01",
        'password authentication failed for user "cadenza"',
        /authentication failed for user "cadenza" on 127\.0\.0\.1:\d+ \(28P01: password authentication failed/,
      ],
      [
        "28000",
        'no pg_hba.conf entry for host "127.0.0.1"',
        /authentication failed for user "cadenza" .*\(28000: no pg_hba\.conf entry/,
      ],
      [
        "3D000",
        'database "cadenza" does not exist',
        /database "cadenza" does not exist on 127\.0\.0\.1:\d+ \(3D000\): create it/,
      ],
      [
        "53300",
        "sorry, too many clients already",
        /refused the connection: sorry, too many clients already \(53300\)/,
      ],
    ])("SQLSTATE %s", async (sqlstate, message, pattern) => {
      const server = await fakePostgres({ refuse: { sqlstate, message } });
      servers.push(server);
      const problem = await checkPostgres(server.url("cadenza", "s3cret"), 2_000);
      expect(problem?.message).toMatch(pattern);
      expect(problem?.exitCode).toBe(sqlstate === "53300" ? 1 : 2);
      expect(problem?.message).not.toContain("s3cret");
    });

    it("times out at DATABASE_CONNECT_TIMEOUT on a server that never answers", async () => {
      const server = await fakePostgres("silent");
      servers.push(server);
      const started = Date.now();
      const problem = await checkPostgres(server.url("cadenza", "s3cret"), 300);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(problem?.message).toMatch(
        /no answer from 127\.0\.0\.1:\d+ within 300 ms \(DATABASE_CONNECT_TIMEOUT\)/,
      );
      expect(problem?.exitCode).toBe(1);
    });
  });
});

describe("why a port or DATA_DIR cannot be used", () => {
  const config = loadConfig({ PORT: "2289", INTERNAL_PORT: "2290" });
  const listenError = (code: string, port: number) =>
    Object.assign(new Error(code), { code, syscall: "listen", port });

  it.each([
    ["EADDRINUSE", 2289, /^PORT=2289 on HOST=127\.0\.0\.1 is in use \(EADDRINUSE\)/],
    ["EACCES", 2289, /^PORT=2289 on HOST=127\.0\.0\.1 is not permitted for this user \(EACCES\)/],
    ["EADDRINUSE", 2290, /^INTERNAL_PORT=2290 on INTERNAL_HOST=127\.0\.0\.1 is in use/],
    ["EADDRNOTAVAIL", 2290, /^INTERNAL_HOST=127\.0\.0\.1 is not an address of this machine/],
  ])("%s on %d", (code, port, pattern) => {
    const problem = listenFailure(config, listenError(code, port));
    expect(problem?.message).toMatch(pattern);
    expect(problem?.exitCode).toBe(2);
  });

  it("leaves errors that are not about listening alone", () => {
    const readFailed = Object.assign(new Error("EACCES"), { code: "EACCES", syscall: "open" });
    expect(listenFailure(config, readFailed)).toBeUndefined();
  });

  it("finds PORT and INTERNAL_PORT on one address in conflict", async () => {
    const { freePort } = await import("./helpers/server.js");
    const port = await freePort();
    const same = loadConfig({ PORT: String(port), INTERNAL_PORT: String(port) });
    const problems = await checkPorts(same);
    expect(problems.map((p) => p.message)).toEqual([
      expect.stringMatching(
        new RegExp(`^INTERNAL_PORT=${port} on INTERNAL_HOST=127.0.0.1 is in use`),
      ),
    ]);
  });

  it.each([
    ["EACCES", 2, /^DATA_DIR=\/srv\/data is not writable by this user/],
    ["EPERM", 2, /^DATA_DIR=\/srv\/data is not writable by this user/],
    ["EROFS", 2, /^DATA_DIR=\/srv\/data is on a read-only file system \(EROFS\)/],
    ["ENOTDIR", 2, /^DATA_DIR=\/srv\/data is not a directory \(ENOTDIR\)/],
    ["ENOSPC", 1, /^DATA_DIR=\/srv\/data: no space left/],
  ])("DATA_DIR %s", (code, exitCode, pattern) => {
    const problem = dataDirProblem("/srv/data", withCode(code));
    expect(problem?.message).toMatch(pattern);
    expect(problem?.exitCode).toBe(exitCode);
  });
});

describe("TLS_CERT and TLS_KEY", () => {
  const a = selfSignedCertificate();
  const b = selfSignedCertificate();
  const dir = mkdtempSync(join(tmpdir(), "cadenza-tls-bad-"));
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };
  const notPem = file("not.pem", "hello\n");
  const brokenCert = file(
    "broken.pem",
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
  );

  it("accepts a certificate with its key", async () => {
    expect(await checkTls({ certFile: a.certFile, keyFile: a.keyFile })).toEqual([]);
  });

  it.each([
    [
      "missing files",
      join(dir, "none.pem"),
      join(dir, "none.key"),
      [/^TLS_CERT=.*none\.pem does not exist/, /^TLS_KEY=.*none\.key does not exist/],
    ],
    ["a directory", dir, a.keyFile, [/^TLS_CERT=.* is a directory/]],
    [
      "not PEM",
      notPem,
      notPem,
      [
        /^TLS_CERT=.*not\.pem is not a PEM certificate/,
        /^TLS_KEY=.*not\.pem is not a PEM private key/,
      ],
    ],
    [
      "swapped",
      a.keyFile,
      a.certFile,
      [
        /^TLS_CERT=.* holds a private key, not a certificate: are TLS_CERT and TLS_KEY swapped\?/,
        /^TLS_KEY=.* holds a certificate, not a private key/,
      ],
    ],
    [
      "a broken certificate",
      brokenCert,
      a.keyFile,
      [/^TLS_CERT=.*broken\.pem is not a valid PEM certificate/],
    ],
    [
      "not a pair",
      a.certFile,
      b.keyFile,
      [/^TLS_CERT=.* and TLS_KEY=.* are not a pair: the key does not belong to the certificate/],
    ],
  ])("%s", async (_, certFile, keyFile, patterns) => {
    const problems = await checkTls({ certFile, keyFile });
    expect(problems.map((p) => p.message)).toEqual(patterns.map((p) => expect.stringMatching(p)));
    expect(problems.every((p) => p.exitCode === 2)).toBe(true);
  });

  it.skipIf(process.getuid?.() === 0)("an unreadable key", async () => {
    const { chmodSync } = await import("node:fs");
    const key = file("unreadable.key", "x");
    chmodSync(key, 0o000);
    const problems = await checkTls({ certFile: a.certFile, keyFile: key });
    expect(problems.map((p) => p.message)).toEqual([
      expect.stringMatching(/^TLS_KEY=.* cannot be read by this user .*\(EACCES\)/),
    ]);
  });
});

describe("the failure report", () => {
  const report = (err: unknown, showStack = false) =>
    describeStartupFailure(err, {
      prefix: "cadenza: cannot start: ",
      showStack,
      secrets: ["s3cret"],
    });

  it("gives every configuration problem a line of its own, exit code 2", () => {
    expect(report(new ConfigError(["PORT=x: expected a number", "FLOW_TTL=y: expected"]))).toEqual({
      text: "cadenza: cannot start: PORT=x: expected a number\ncadenza: cannot start: FLOW_TTL=y: expected\n",
      exitCode: 2,
    });
  });

  it("exits 2 when any problem needs a change, 1 when all may pass", () => {
    const transient = new StartupError("DATABASE_URL=…: refused", { exitCode: 1 });
    expect(report(transient).exitCode).toBe(1);
    expect(report(new AggregateError([transient, new StartupError("PORT=1 is in use")]))).toEqual({
      text: "cadenza: cannot start: DATABASE_URL=…: refused\ncadenza: cannot start: PORT=1 is in use\n",
      exitCode: 2,
    });
  });

  it("prints an unexpected error as one line, its stack only at debug, never [object Object]", () => {
    const thrown = { reason: "weird", password: "s3cret" };
    const plain = report(thrown);
    expect(plain.exitCode).toBe(1);
    expect(plain.text).toBe(
      "cadenza: cannot start: unexpected error: { reason: 'weird', password: '***' } (LOG_LEVEL=debug prints its stack)\n",
    );
    const bug = new TypeError("x is not a function\nsecond line");
    expect(report(bug).text.split("\n")).toEqual([
      "cadenza: cannot start: unexpected error: TypeError: x is not a function second line (LOG_LEVEL=debug prints its stack)",
      "",
    ]);
    const debug = report(bug, true).text.split("\n");
    expect(debug[0]).toBe(
      "cadenza: cannot start: unexpected error: TypeError: x is not a function second line",
    );
    expect(debug[1]).toBe("TypeError: x is not a function");
    expect(debug.some((l) => l.includes("startup-problems.test.ts"))).toBe(true);
  });
});
