import { redactDatabaseUrl } from "./database-url.js";
import {
  bool,
  cidr,
  domainName,
  duration,
  int,
  key32,
  limit,
  list,
  oneOf,
  origin,
  type Parser,
  postgresUrl,
  rate,
  SettingProblem,
  serverId,
  text,
  webOrigin,
} from "./setting-parsers.js";

/**
 * Every environment variable cadenza reads, declared once: its default, how it
 * is parsed, and what it means. This table drives parsing and the error report
 * (src/config.ts) and the README's configuration table (`npm run docs`, which
 * a test keeps in step).
 */

export interface Setting<T> {
  /** The text used when the variable is unset or empty. */
  readonly default: string;
  /** How the README shows the default, when not the text itself. */
  readonly shownDefault?: string;
  readonly parse: Parser<T>;
  /** How a bad value is echoed in the error report: secrets are not (default: as given). */
  readonly shown?: (value: string) => string;
  /** One sentence for the README. */
  readonly doc: string;
}

const setting = <T>(s: Setting<T>): Setting<T> => s;
const hidden = (): string => "<hidden>";

export const logLevels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export const settings = {
  HOST: setting({
    default: "127.0.0.1",
    parse: text,
    doc: "address to listen on (`0.0.0.0` in the Docker image)",
  }),
  PORT: setting({ default: "2289", parse: int(0, 65535), doc: "the one port for every protocol" }),
  INTERNAL_HOST: setting({
    default: "127.0.0.1",
    parse: text,
    doc: "address of the internal listener (HomeserverService, admin API, metrics) for the homeserver's own services; not loopback requires `INTERNAL_TOKEN`",
  }),
  INTERNAL_PORT: setting({
    default: "2290",
    parse: int(0, 65535),
    doc: "port of the internal listener; the public port never serves its services",
  }),
  INTERNAL_TOKEN: setting({
    default: "",
    parse: (value) => {
      if (value === "") return undefined;
      // A header value cannot carry them intact; a short token only earns a warning.
      if (/[\s\p{Cc}]/u.test(value)) {
        throw new SettingProblem(
          "expected no spaces or control characters (openssl rand -base64 32 makes a good one)",
        );
      }
      return value;
    },
    shown: hidden,
    doc: "when set, every internal call needs `Authorization: Bearer <INTERNAL_TOKEN>` (cadenza warns at start when it is shorter than 16 characters)",
  }),
  SERVER_ID: setting({
    default: "",
    shownDefault: "`localhost:<PORT>`",
    parse: (value) => (value === "" ? undefined : serverId({ allowScheme: false })(value)),
    doc: "this homeserver's ID, `domain:port` (such as `chat.example.org:2289`): federation tokens for other IDs are refused",
  }),
  LOG_LEVEL: setting({
    default: "info",
    parse: oneOf(logLevels),
    doc: "`fatal`, `error`, `warn`, `info`, `debug`, `trace` or `silent`; logs are JSON lines on stdout",
  }),
  DATABASE_URL: setting({
    default: "",
    parse: postgresUrl,
    shown: redactDatabaseUrl,
    doc: "`postgres://…` to use Postgres; unset uses embedded PGlite in `DATA_DIR`",
  }),
  DATABASE_LISTEN_URL: setting({
    default: "",
    shownDefault: "`DATABASE_URL`",
    parse: postgresUrl,
    doc: "`postgres://…` for LISTEN only (it needs a session): direct to Postgres when `DATABASE_URL` is a pooler; see _Replicas behind PgBouncer_",
  }),
  DATABASE_POOL_SIZE: setting({
    default: "10",
    parse: int(1, 1000),
    doc: "Postgres connections per process",
  }),
  DATABASE_CONNECT_TIMEOUT: setting({
    default: "5s",
    parse: duration(100, 600_000),
    doc: "how long getting a Postgres connection (a new one, or a free one from the pool) may take before a call fails",
  }),
  DATABASE_QUERY_TIMEOUT: setting({
    default: "10s",
    parse: duration(100, 3_600_000),
    doc: "longest a Postgres statement may run: the server cancels it, and cadenza stops waiting for a frozen database",
  }),
  READY_TIMEOUT: setting({
    default: "2s",
    parse: duration(100, 60_000),
    doc: "how long `/readyz` waits for the database before it answers 503",
  }),
  DATA_DIR: setting({
    default: "./data",
    parse: text,
    doc: "PGlite's data directory (`memory://` keeps it in memory only); one process per directory",
  }),
  TLS_CERT: setting({
    default: "",
    parse: text,
    doc: "PEM certificate file; with `TLS_KEY` the port serves TLS, HTTP/2 and HTTP/1.1 by ALPN",
  }),
  TLS_KEY: setting({ default: "", parse: text, doc: "PEM private key file for `TLS_CERT`" }),
  CORS_ORIGINS: setting({
    default: "",
    parse: list(origin),
    doc: "comma-separated exact origins allowed to call from browsers (`*` for any); empty allows none",
  }),
  WEB_UI: setting({
    default: "on",
    parse: oneOf(["on", "off"]),
    doc: "`on` serves the reference web client (built into `dist/web` by `npm run build`) at `/` on the public port, with a strict Content-Security-Policy; `off` serves nothing there",
  }),
  FLOW_TTL: setting({
    default: "15m",
    parse: duration(10_000),
    doc: "how long an auth flow lives",
  }),
  SESSION_IDLE_TTL: setting({
    default: "30d",
    parse: duration(60_000, Number.MAX_SAFE_INTEGER),
    doc: "a session ends this long after its last use",
  }),
  SESSION_MAX_TTL: setting({
    default: "180d",
    parse: duration(60_000, Number.MAX_SAFE_INTEGER),
    doc: "a session ends this long after login, used or not",
  }),
  REGISTRATION: setting({
    default: "open",
    parse: oneOf(["open", "closed", "invite"]),
    doc: "`open`, `closed` (`register` is then not offered) or `invite` (`register` takes an invite code; operators make invites with the CLI or admin API); governs local accounts only, not users of other homeservers (see `FEDERATION`)",
  }),
  SMTP_URL: setting({
    default: "",
    parse: (value) => {
      if (value === "") return undefined;
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        throw new SettingProblem("expected smtp://[user:password@]host[:port] or smtps://…");
      }
      if (url.protocol !== "smtp:" && url.protocol !== "smtps:") {
        throw new SettingProblem("expected smtp://[user:password@]host[:port] or smtps://…");
      }
      return value;
    },
    doc: "`smtp://[user:password@]host[:port]` (STARTTLS when offered) or `smtps://…` (TLS); without it, password reset, account deletion and email verification are not offered",
  }),
  SMTP_FROM: setting({
    default: "",
    shownDefault: "`cadenza@<SERVER_ID host>`",
    parse: (value) => {
      if (value !== "" && !/^[^\s@<>]+@[^\s@<>]+$/.test(value)) {
        throw new SettingProblem("expected an email address such as accounts@chat.example.org");
      }
      return value === "" ? undefined : value;
    },
    doc: "the sender of cadenza's emails",
  }),
  EMAIL_VERIFICATION: setting({
    default: "off",
    parse: oneOf(["off", "required"]),
    doc: "`required`: a registration is finished only once the code emailed to its address is entered (needs `SMTP_URL`)",
  }),
  EMAIL_CODE_TTL: setting({
    default: "15m",
    parse: duration(60_000, 86_400_000),
    doc: "how long an emailed code (reset, deletion, verification) can be used",
  }),
  TOTP_ISSUER: setting({
    default: "",
    shownDefault: "the `SERVER_ID` host",
    parse: (value) => {
      if (value.length > 64 || /[:\p{Cc}]/u.test(value)) {
        throw new SettingProblem("expected at most 64 characters, without a colon");
      }
      return value === "" ? undefined : value;
    },
    doc: "the name authenticator apps show beside a TOTP second factor of this server",
  }),
  REAUTH_WINDOW: setting({
    default: "10m",
    parse: duration(0, 86_400_000),
    doc: "how long after signing in a session may begin TOTP enrolment without the password again (`0`: always ask for it)",
  }),
  PASSKEYS: setting({
    default: "on",
    parse: oneOf(["on", "off"]),
    doc: "`on` offers passkeys (WebAuthn) to clients that announce support (the reference web client) from an origin in `WEBAUTHN_ORIGINS`; generic Harmony clients never see them; `off` offers them to no one (stored passkeys stay)",
  }),
  WEBAUTHN_RP_ID: setting({
    default: "",
    shownDefault: "the `SERVER_ID` host",
    parse: (value) => (value === "" ? undefined : domainName(value)),
    doc: "the WebAuthn relying party ID passkeys are bound to: the page's host or a parent domain of it (never an IP address; with an IP `SERVER_ID` and no value here, passkeys are not offered)",
  }),
  WEBAUTHN_ORIGINS: setting({
    default: "",
    shownDefault: "`https://<SERVER_ID>` (`:443` left out; `http://` for `localhost`)",
    parse: list(webOrigin),
    doc: "comma-separated origins whose pages may register and use passkeys (each the RP ID or a subdomain of it; `http://` only for `localhost`); the passkey option is offered only to a BeginAuth whose `Origin` is one of them",
  }),
  LIMIT_EMAILS_PER_ACCOUNT: setting({
    default: "5/1h",
    parse: rate,
    doc: "emails with codes sent per email address (known or not)",
  }),
  LIMIT_EMAILS_PER_ADDRESS: setting({
    default: "20/1h",
    parse: rate,
    doc: "emails with codes asked for per client address",
  }),
  ARGON2_MEMORY_KIB: setting({
    default: "19456",
    parse: int(8, 4_194_304),
    doc: "argon2id memory, KiB (at least 8 × `ARGON2_PARALLELISM`)",
  }),
  ARGON2_ITERATIONS: setting({ default: "2", parse: int(1, 100), doc: "argon2id passes" }),
  ARGON2_PARALLELISM: setting({ default: "1", parse: int(1, 16), doc: "argon2id lanes" }),
  READ_MAX_BYTES: setting({
    default: "65536",
    parse: int(1024, 16 * 1024 * 1024),
    doc: "largest request message accepted",
  }),
  SHUTDOWN_DRAIN: setting({
    default: "5s",
    parse: duration(0),
    doc: "on SIGTERM, how long `/readyz` answers 503 while calls are still served, so load balancers stop sending new ones first",
  }),
  SHUTDOWN_GRACE: setting({
    default: "10s",
    parse: duration(0),
    doc: "how long shutdown waits for calls in flight",
  }),
  REQUEST_DEADLINE: setting({
    default: "10s",
    parse: duration(100, 300_000),
    doc: "time a new connection has to send its first request's headers (TLS handshake included); later HTTP/1.1 requests too",
  }),
  REQUEST_TIMEOUT: setting({
    default: "30s",
    parse: duration(100, 3_600_000),
    doc: "time a request has to arrive whole, body included (HTTP/1.1 and HTTP/2); at least `REQUEST_DEADLINE`",
  }),
  IDLE_TIMEOUT: setting({
    default: "75s",
    parse: duration(100, 3_600_000),
    doc: "an HTTP/1.1 keep-alive connection, or an HTTP/2 one with no open stream, is closed after this long (HTTP/2: GOAWAY)",
  }),
  MAX_CONNECTIONS: setting({
    default: "10000",
    parse: int(1, 1_000_000),
    doc: "open connections at most; more are closed as they arrive (lowered to the open-file limit, `ulimit -n`, less 64)",
  }),
  MAX_CONNECTIONS_PER_ADDRESS: setting({
    default: "256",
    parse: int(0, 1_000_000),
    doc: "open connections at most from one client address (IPv6: one /64); `0`: no limit (behind a reverse proxy, for now)",
  }),
  HTTP2_MAX_CONCURRENT_STREAMS: setting({
    default: "100",
    parse: int(1, 2 ** 31 - 1),
    doc: "streams (calls) one HTTP/2 connection may have open at once",
  }),
  HRPC_STREAM_REQUEST_TIMEOUT: setting({
    default: "10s",
    parse: duration(100),
    doc: "how long an hRPC WebSocket may take to send its request before it is closed",
  }),
  FEDERATION: setting({
    default: "on",
    parse: oneOf(["on", "off"]),
    doc: "`on` or `off`: Federate and LoginFederated",
  }),
  FEDERATION_ALLOW: setting({
    default: "",
    parse: list(serverId({ allowScheme: true })),
    doc: "comma-separated server IDs; when set, only these are federated with",
  }),
  FEDERATION_DENY: setting({
    default: "",
    parse: list(serverId({ allowScheme: true })),
    doc: "comma-separated server IDs never federated with",
  }),
  FEDERATION_ALLOW_INSECURE: setting({
    default: "false",
    parse: bool,
    doc: "`true` allows plain http and loopback/private addresses, and makes bare IDs mean `http://` (development and tests only)",
  }),
  FEDERATION_KEY_TTL: setting({
    default: "1d",
    parse: duration(60_000),
    doc: "how long a homeserver's fetched key is trusted before it is fetched again",
  }),
  FEDERATION_TOKEN_TTL: setting({
    default: "5m",
    parse: duration(10_000),
    doc: "how long after `issued_at` a token is accepted (and how long an untimed one is refused as a replay)",
  }),
  FEDERATION_ACCEPT_UNTIMED: setting({
    default: "true",
    parse: bool,
    doc: "accept tokens without `issued_at`, as other Harmony servers issue them",
  }),
  FEDERATION_TIMEOUT: setting({
    default: "5s",
    parse: duration(100),
    doc: "timeout for fetching another homeserver's key",
  }),
  FEDERATION_FETCH_FAILURE_TTL: setting({
    default: "1m",
    parse: duration(1000),
    doc: "after a homeserver's key could not be fetched, LoginFederated for it answers `hrpc.unavailable` at once for this long, without trying again",
  }),
  FEDERATION_MAX_FETCHES: setting({
    default: "16",
    parse: int(1, 1024),
    doc: "most key fetches in flight at once (one per homeserver, however many logins wait for it); beyond it LoginFederated answers `hrpc.unavailable` at once",
  }),
  ACCOUNT_EVENT_RETENTION: setting({
    default: "30d",
    parse: duration(60_000, Number.MAX_SAFE_INTEGER),
    doc: "how long account events are kept for `StreamAccountEvents` consumers to catch up",
  }),
  TRUSTED_PROXIES: setting({
    default: "",
    parse: list(cidr),
    doc: "comma-separated CIDRs of reverse proxies; only from these is the client address taken from `X-Forwarded-For`/`Forwarded` (rightmost untrusted hop)",
  }),
  LOGIN_FAILURES_BEFORE_DELAY: setting({
    default: "5",
    parse: limit(1, 1000),
    doc: "failed logins per account (by email, known or not) before each further attempt must wait; `off` disables the schedule",
  }),
  LOGIN_FIRST_DELAY: setting({
    default: "1s",
    parse: duration(1),
    doc: "the first wait after `LOGIN_FAILURES_BEFORE_DELAY` failures; each further failure doubles it",
  }),
  LOGIN_MAX_DELAY: setting({
    default: "15m",
    parse: duration(1),
    doc: "the longest wait between attempts for one account",
  }),
  LOGIN_FAILURE_RESET: setting({
    default: "12h",
    parse: duration(1000),
    doc: "an account's failures are forgotten this long after the last one (and at once on a successful login)",
  }),
  LIMIT_BEGIN_AUTH: setting({
    default: "120/1m",
    parse: rate,
    doc: "BeginAuth calls per client address (`N/duration` or `off`)",
  }),
  LIMIT_FORMS: setting({
    default: "60/1m",
    parse: rate,
    doc: "form submissions (NextStep with a form) per client address",
  }),
  LIMIT_REGISTRATIONS: setting({
    default: "20/1h",
    parse: rate,
    doc: "registrations per client address",
  }),
  LIMIT_LOGIN_FEDERATED: setting({
    default: "60/1m",
    parse: rate,
    doc: "LoginFederated calls per client address",
  }),
  LIMIT_FEDERATE: setting({
    default: "60/1m",
    parse: rate,
    doc: "Federate calls per client address",
  }),
  LIMIT_LIVE_FLOWS: setting({
    default: "100",
    parse: limit(1, 1_000_000),
    doc: "unfinished, unexpired auth flows per client address (BeginAuth beyond it is refused)",
  }),
  LIMIT_STREAMS_PER_ADDRESS: setting({
    default: "50",
    parse: limit(1, 1_000_000),
    doc: "open StreamSteps calls and hRPC WebSockets per client address, per process",
  }),
  MAX_OPEN_STREAMS: setting({
    default: "20000",
    parse: limit(1, 10_000_000),
    doc: "open StreamSteps calls and hRPC WebSockets in all, per process",
  }),
  ARGON2_MAX_IN_FLIGHT: setting({
    default: "4",
    parse: limit(1, 1024),
    doc: "argon2id hashes computed at once per process (libuv's thread pool has 4 threads unless `UV_THREADPOOL_SIZE` says otherwise); `off`: no gate",
  }),
  ARGON2_MAX_QUEUED: setting({
    default: "64",
    parse: limit(0, 100_000),
    doc: "argon2id hashes waiting for a thread; beyond it a login or registration is refused at once with `hrpc.resource-exhausted` and `Retry-After`",
  }),
  KEY_ENCRYPTION_KEY: setting({
    default: "",
    parse: key32,
    shown: hidden,
    doc: "32 bytes (base64 or 64 hex digits); when set, the server's private key is stored encrypted with AES-256-GCM",
  }),
} as const satisfies Record<string, Setting<unknown>>;

export type SettingName = keyof typeof settings;

/** Every setting's parsed value, by variable name. */
export type SettingValues = {
  readonly [K in SettingName]: ReturnType<(typeof settings)[K]["parse"]>;
};

/** The README's configuration table, generated from {@link settings}. */
export function settingsTable(): string {
  const rows = Object.entries(settings).map(([name, s]: [string, Setting<unknown>]) => [
    `\`${name}\``,
    s.shownDefault ?? (s.default === "" ? "(unset)" : `\`${s.default}\``),
    s.doc,
  ]);
  const header = ["variable", "default", "meaning"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

const tableStart = "<!-- settings:start (generated by npm run docs from src/settings.ts) -->";
const tableEnd = "<!-- settings:end -->";

/** `markdown` with the text between the settings markers replaced by {@link settingsTable}. */
export function replaceSettingsTable(markdown: string): string {
  const start = markdown.indexOf(tableStart);
  const end = markdown.indexOf(tableEnd);
  if (start === -1 || end < start) {
    throw new Error(`the README has no ${tableStart} … ${tableEnd} markers`);
  }
  return `${markdown.slice(0, start + tableStart.length)}\n${settingsTable()}\n${markdown.slice(end)}`;
}
