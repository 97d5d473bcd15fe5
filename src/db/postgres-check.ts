import pg from "pg";
import { cutSecrets, databaseUrlSecrets, redactDatabaseUrl } from "../database-url.js";
import { StartupError } from "../errors.js";

/** Where DATABASE_URL points, as pg reads it (environment defaults included). */
export interface PostgresTarget {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
}

/** The check's own deadline passed: the server accepted no connection, or did not answer. */
export class ConnectTimeout extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = "ConnectTimeout";
  }
}

/**
 * Whether cadenza can use DATABASE_URL, checked before anything else touches
 * the database: one connection, opened as the pool opens them, runs
 * `SELECT 1` and is closed, all within `timeoutMs` (DATABASE_CONNECT_TIMEOUT).
 * Returns the one line saying what is wrong, or undefined.
 */
export async function checkPostgres(
  url: string,
  timeoutMs: number,
): Promise<StartupError | undefined> {
  // No connectionTimeoutMillis: this check's own deadline covers connecting
  // and the query together, and tells a timeout apart without reading pg's
  // message text.
  const client = new pg.Client({ connectionString: url, query_timeout: timeoutMs });
  const target: PostgresTarget = {
    url,
    host: client.host,
    port: client.port,
    database: client.database ?? "",
    user: client.user ?? "",
  };
  // A socket error after the outcome is known would otherwise crash the process.
  client.on("error", () => {});
  let timer: NodeJS.Timeout | undefined;
  const attempt = (async () => {
    await client.connect();
    await client.query("SELECT 1");
  })();
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ConnectTimeout(timeoutMs)), timeoutMs);
  });
  try {
    await Promise.race([attempt, deadline]);
    await client.end();
    return undefined;
  } catch (err) {
    attempt.catch(() => {});
    client.connection.stream.destroy();
    return connectionProblem(target, err);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The one line for a failure to connect to `target`: what happened, with the
 * password cut out, and what to do. Exit code 2 where DATABASE_URL (or the
 * database it names) must change, 1 where Postgres may yet come up.
 */
export function connectionProblem(target: PostgresTarget, err: unknown): StartupError {
  const where = `${target.host}:${target.port}`;
  const code = (err as { code?: unknown } | undefined)?.code;
  const line = (text: string, exitCode: 1 | 2) =>
    new StartupError(
      cutSecrets(
        `DATABASE_URL=${redactDatabaseUrl(target.url)}: ${text}`,
        databaseUrlSecrets(target.url),
      ),
      { exitCode, cause: err },
    );
  const said = err instanceof Error ? err.message : String(err);
  if (err instanceof ConnectTimeout) {
    return line(
      `no answer from ${where} within ${err.timeoutMs} ms (DATABASE_CONNECT_TIMEOUT): check the host, the port and any firewall between, or raise DATABASE_CONNECT_TIMEOUT`,
      1,
    );
  }
  if (err instanceof pg.DatabaseError) {
    switch (code) {
      case "3D000":
        return line(
          `database "${target.database}" does not exist on ${where} (3D000): create it (createdb ${target.database}), or fix the name`,
          2,
        );
      case "28P01":
      case "28000":
        return line(
          `authentication failed for user "${target.user}" on ${where} (${code}: ${said}): check the user and password`,
          2,
        );
      default:
        return line(`Postgres at ${where} refused the connection: ${said} (${String(code)})`, 1);
    }
  }
  switch (code) {
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return line(`host ${target.host} not found (${code}): check the host name`, 2);
    case "ECONNREFUSED":
      return line(
        `connection to ${where} refused (ECONNREFUSED): is Postgres running, and listening on that address and port?`,
        1,
      );
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return line(`cannot reach ${where} (${code}): check the host, the port and the network`, 1);
    default:
      return line(
        `cannot connect to ${where}: ${said}${typeof code === "string" ? ` (${code})` : ""}`,
        1,
      );
  }
}
