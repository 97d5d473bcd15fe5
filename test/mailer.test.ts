import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import pino from "pino";
import { SMTPServer } from "smtp-server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMailer } from "../src/email/mailer.js";

/**
 * A refused send is logged with nodemailer's codes only: an SMTP server's
 * reply quotes the recipient, and the code must not reach the log either.
 */
describe("a code email the SMTP server refuses", () => {
  let server: SMTPServer;
  let url: string;

  beforeAll(async () => {
    server = new SMTPServer({
      authOptional: true,
      disabledCommands: ["STARTTLS"],
      logger: false,
      onRcptTo(address, _session, callback) {
        const err = Object.assign(
          new Error(`<${address.address}>: Recipient address rejected: user unknown`),
          { responseCode: 550 },
        );
        callback(err);
      },
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `smtp://127.0.0.1:${(server.server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it("logs the SMTP command and reply code, never the address or the code", async () => {
    const lines: string[] = [];
    const logger = pino(
      { level: "debug" },
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          lines.push(chunk.toString());
          done();
        },
      }),
    );
    const mailer = createMailer({
      config: { smtpUrl: url, from: "cadenza@hs.example", verification: false, codeTtlMs: 600_000 },
      homeserver: "hs.example",
      logger,
    });
    if (!mailer) throw new Error("a mailer with SMTP_URL set");
    const address = "secret-person@mail.example";
    const sent = mailer.sendCode(address, "reset-password", "ABCD-2345");
    await expect(sent).rejects.toThrow("sending a code email failed");
    await expect(sent).rejects.not.toThrow(/secret-person|ABCD/);
    mailer.close();

    const failure = lines.map((l) => JSON.parse(l)).find((l) => l.msg?.includes("failed"));
    expect(failure).toMatchObject({
      level: 50,
      purpose: "reset-password",
      smtp: { code: "EENVELOPE", command: "RCPT", responseCode: 550 },
    });
    const all = lines.join("\n");
    expect(all).not.toContain("secret-person");
    expect(all).not.toContain("ABCD-2345");
  });
});
