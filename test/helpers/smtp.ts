import type { AddressInfo } from "node:net";
import { type ParsedMail, simpleParser } from "mailparser";
import { SMTPServer } from "smtp-server";

/** A message the test SMTP server received, parsed. */
export interface ReceivedMail {
  readonly to: string;
  readonly from: string;
  readonly subject: string;
  readonly text: string;
  /** The code in it (`XXXX-XXXX`), if any. */
  readonly code: string | undefined;
}

/**
 * A real SMTP server (the smtp-server package) on loopback, port 0, that
 * accepts everything and keeps what arrives, parsed with mailparser.
 */
export async function startSmtpServer() {
  const received: ReceivedMail[] = [];
  const waiters: { to: string; resolve: (m: ReceivedMail) => void }[] = [];
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    logger: false,
    onData(stream, _session, callback) {
      simpleParser(stream)
        .then((parsed: ParsedMail) => {
          const to = Array.isArray(parsed.to)
            ? (parsed.to[0]?.text ?? "")
            : (parsed.to?.text ?? "");
          const text = parsed.text ?? "";
          const mail: ReceivedMail = {
            to,
            from: parsed.from?.text ?? "",
            subject: parsed.subject ?? "",
            text,
            code: /\b([0-9A-Z]{4}-[0-9A-Z]{4})\b/.exec(text)?.[1],
          };
          received.push(mail);
          const waiter = waiters.find((w) => w.to === to);
          if (waiter) {
            waiters.splice(waiters.indexOf(waiter), 1);
            waiter.resolve(mail);
          }
          callback();
        })
        .catch(callback);
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.server.address() as AddressInfo;
  return {
    url: `smtp://127.0.0.1:${port}`,
    received,
    /** The next message to `to`, or one that already came and was not taken yet. */
    next(to: string): Promise<ReceivedMail> {
      const index = received.findIndex((m) => m.to === to && !taken.has(m));
      const already = index === -1 ? undefined : received[index];
      if (already) {
        taken.add(already);
        return Promise.resolve(already);
      }
      return new Promise((resolve) =>
        waiters.push({
          to,
          resolve: (m) => {
            taken.add(m);
            resolve(m);
          },
        }),
      );
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const taken = new WeakSet<ReceivedMail>();
