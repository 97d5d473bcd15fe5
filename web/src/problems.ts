import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorSchema, RetryInfoSchema } from "../../src/gen/hrpc/v1/hrpc_pb.js";
import type { FieldView } from "./fields.js";

/**
 * What went wrong with a call, as the page tells the user: the Harmony
 * identifier the server sent (in the `hrpc.v1.Error` detail cadenza puts on
 * every error, whatever the protocol), its human message, and how long to
 * wait when throttled.
 */
export interface Problem {
  readonly code: Code;
  /** The Harmony identifier, such as `h.invalid-email`; undefined when the server sent none. */
  readonly identifier: string | undefined;
  /** The server's message for a person (or the transport's, when no server answered). */
  readonly message: string;
  /** Seconds to wait before trying again, when the server said (RetryInfo, else Retry-After). */
  readonly retryAfterSeconds: number | undefined;
  /**
   * No server answered: the network failed, or the browser refused the answer
   * (a cross-origin page whose origin the server does not list in
   * CORS_ORIGINS, or a connect-src the page's CSP does not allow).
   */
  readonly unreachable: boolean;
}

function retryAfterOf(err: ConnectError, details: Uint8Array | undefined): number | undefined {
  if (details !== undefined && details.length > 0) {
    try {
      return fromBinary(RetryInfoSchema, details).retryAfter;
    } catch {
      // Not a RetryInfo: fall back to the header.
    }
  }
  const header = err.metadata.get("retry-after");
  if (header !== null && /^\d+$/.test(header.trim())) return Number(header.trim());
  return undefined;
}

export function problemOf(err: unknown): Problem {
  const e = ConnectError.from(err);
  const [detail] = e.findDetails(ErrorSchema);
  // fetch() rejects with a TypeError when no response can be read.
  const unreachable =
    detail === undefined && e.code === Code.Unknown && e.cause instanceof TypeError;
  return {
    code: e.code,
    identifier: detail?.identifier || undefined,
    message: detail?.humanMessage || e.rawMessage,
    retryAfterSeconds: retryAfterOf(e, detail?.details),
    unreachable,
  };
}

/** The session the page holds is no longer valid (Harmony clients log out on exactly this). */
export const isBlankSession = (p: Problem): boolean => p.identifier === "h.blank-session";

/**
 * The form field a problem concerns, as an index into `fields`, or undefined
 * when it concerns the form as a whole. Deliberately vague answers stay with
 * the form: `h.bad-password\nh.bad-email` does not say which was wrong, and
 * `h.already-registered` does not say whether the email or the username.
 */
export function fieldOfProblem(
  identifier: string | undefined,
  fields: readonly Pick<FieldView, "name" | "type">[],
): number | undefined {
  const byName = (name: string) => {
    const i = fields.findIndex((f) => f.name === name);
    return i === -1 ? undefined : i;
  };
  const byType = (type: string) => {
    const i = fields.findIndex((f) => f.type === type);
    return i === -1 ? undefined : i;
  };
  switch (identifier) {
    case "h.invalid-email":
      return byName("email") ?? byType("email");
    case "h.invalid-username":
      return byName("username");
    case "h.invalid-password":
      // The rules apply to a new password; a login form has only the one.
      return byType("new-password") ?? byName("password");
    case "h.invalid-single-use-token":
    case "h.invalid-registration-token":
      return byName("token");
    default:
      return undefined;
  }
}

/** A server's message as a sentence: "wrong email or password" → "Wrong email or password." */
export function sentence(text: string): string {
  const t = text.trim();
  if (t === "") return t;
  const capital = (t[0] ?? "").toUpperCase() + t.slice(1);
  return /[.!?…]$/.test(capital) ? capital : `${capital}.`;
}

/** "42 seconds", "3 minutes", "1 hour 5 minutes": how long a wait is, in words. */
export function waitText(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  const unit = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (s < 60) return unit(s, "second");
  const minutes = Math.ceil(s / 60);
  if (minutes < 60) return unit(minutes, "minute");
  const h = Math.floor(minutes / 60);
  const m = minutes % 60;
  return m === 0 ? unit(h, "hour") : `${unit(h, "hour")} ${unit(m, "minute")}`;
}
