import { createTransport } from "nodemailer";
import type { Logger } from "pino";
import type { CodePurpose } from "../auth/flow-machine.js";
import type { EmailConfig } from "../config.js";

/** Sends the emails that carry codes; plain text, short, naming the homeserver. */
export interface Mailer {
  /**
   * Sends `code` to `to` for `purpose`. Resolves when the SMTP server took it.
   * Callers that must not let timing tell known addresses from unknown ones
   * do not await it.
   */
  sendCode(to: string, purpose: CodePurpose, code: string): Promise<void>;
  /**
   * Tells the owner of `to` that someone tried to register with it (with
   * EMAIL_VERIFICATION=required, instead of the code the form promised).
   */
  sendAlreadyRegistered(to: string): Promise<void>;
  close(): void;
}

/**
 * What can be logged of a failed send: nodemailer's error code (ECONNECTION,
 * EAUTH, EENVELOPE, …), the SMTP command and the server's reply code, never
 * its reply text or message.
 */
export function smtpFailure(err: unknown): Record<string, string | number> {
  const e = (err ?? {}) as { code?: unknown; command?: unknown; responseCode?: unknown };
  const out: Record<string, string | number> = {};
  if (typeof e.code === "string") out.code = e.code;
  if (typeof e.command === "string") out.command = e.command.split(" ", 1)[0] ?? "";
  if (typeof e.responseCode === "number") out.responseCode = e.responseCode;
  return out;
}

/** Each email's subject and text, by purpose. */
export function emailText(
  purpose: CodePurpose,
  code: string,
  homeserver: string,
  ttlMinutes: number,
): { subject: string; text: string } {
  const expiry = `The code works once, for ${ttlMinutes} minutes.`;
  switch (purpose) {
    case "verify-email":
      return {
        subject: `Your code to finish registering on ${homeserver}`,
        text: `To finish registering on the Harmony homeserver ${homeserver}, enter this code:\n\n    ${code}\n\n${expiry}\nIf you did not register, ignore this email: no account is made without the code.\n`,
      };
    case "reset-password":
      return {
        subject: `Your code to reset your password on ${homeserver}`,
        text: `Someone asked to reset the password of your account on the Harmony homeserver ${homeserver}. To choose a new password, enter this code:\n\n    ${code}\n\n${expiry} Resetting ends every session of the account.\nIf it was not you, ignore this email: your password stays as it is.\n`,
      };
    case "delete-user":
      return {
        subject: `Your code to delete your account on ${homeserver}`,
        text: `Someone asked to delete your account on the Harmony homeserver ${homeserver}. To delete it, with all its sessions, enter this code:\n\n    ${code}\n\n${expiry} Deleting cannot be undone.\nIf it was not you, ignore this email: your account stays as it is.\n`,
      };
  }
}

/** A mailer over SMTP (nodemailer), or undefined when SMTP_URL is unset. */
export function createMailer(deps: {
  readonly config: EmailConfig;
  readonly homeserver: string;
  readonly logger: Logger;
}): Mailer | undefined {
  const { config, homeserver, logger } = deps;
  if (config.smtpUrl === undefined) return undefined;
  const transport = createTransport(config.smtpUrl);
  const ttlMinutes = Math.round(config.codeTtlMs / 60_000);
  const send = async (to: string, purpose: string, subject: string, text: string) => {
    try {
      await transport.sendMail({ from: config.from, to, subject, text });
      logger.info({ purpose }, "code email sent");
    } catch (err) {
      // Never the code or the recipient's address in the log: nodemailer's
      // message quotes the server's reply, which names the recipient
      // ("550 5.1.1 <…>: Recipient address rejected"), so only its codes.
      logger.error({ smtp: smtpFailure(err), purpose }, "sending a code email failed (SMTP_URL)");
      throw new Error("sending a code email failed");
    }
  };
  return {
    async sendCode(to, purpose, code) {
      const { subject, text } = emailText(purpose, code, homeserver, ttlMinutes);
      await send(to, purpose, subject, text);
    },
    async sendAlreadyRegistered(to) {
      await send(
        to,
        "already-registered",
        `Someone tried to register on ${homeserver} with your address`,
        `Someone tried to register a new account on the Harmony homeserver ${homeserver} with this address, which already has an account there. No account was made.\n\nIf it was you, log in instead, or reset your password if you forgot it.\nIf it was not you, ignore this email: your account stays as it is.\n`,
      );
    },
    close: () => transport.close(),
  };
}
