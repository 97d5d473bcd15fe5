import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { createSecureContext } from "node:tls";
import type { Config } from "./config.js";
import { checkDataDir, inMemory } from "./db/data-dir-lock.js";
import { StartupError } from "./errors.js";
import { isLoopbackHost } from "./net-address.js";

/** An INTERNAL_TOKEN shorter than this is accepted, with a warning at start. */
const MIN_INTERNAL_TOKEN_LENGTH = 16;

/**
 * What an operator should hear about at every start: settings that work but
 * leave the server weaker than it should be, each with what to do.
 */
export function startupWarnings(config: Config): string[] {
  const warnings: string[] = [];
  if (config.federation.keyEncryptionKey === undefined && !isLoopbackHost(config.host)) {
    warnings.push(
      "KEY_ENCRYPTION_KEY is unset, so this server's Ed25519 signing key is stored in the database in clear: " +
        "anyone who reads a backup or the data directory can sign federation tokens as this homeserver. " +
        "Generate a key with `npm run cli -- key generate-encryption-key` (in the image: `node dist/cli.js key generate-encryption-key`), " +
        "set KEY_ENCRYPTION_KEY to it and restart; the key is then encrypted in place.",
    );
  }
  if (config.internal.token === undefined && !isLoopbackHost(config.host)) {
    warnings.push(
      `INTERNAL_TOKEN is unset, so any process that can reach ${config.internal.host}:${config.internal.port} ` +
        "(on this machine, or in this container's network) can introspect sessions, sign federation tokens and run admin commands. " +
        "Set INTERNAL_TOKEN to a long random value (`openssl rand -base64 32`) and give it to the chat server and the CLI.",
    );
  }
  const token = config.internal.token;
  if (token !== undefined && token.length < MIN_INTERNAL_TOKEN_LENGTH) {
    warnings.push(
      `INTERNAL_TOKEN is only ${token.length} characters long, short enough to guess: ` +
        "set it to a long random value (`openssl rand -base64 32`) and give it to the chat server and the CLI.",
    );
  }
  warnings.push(...lookalikeWarnings(config));
  return warnings;
}

/** One warning per variable that looks like a misspelt setting (the CLI's warnings too). */
export function lookalikeWarnings(config: Pick<Config, "lookalikes">): string[] {
  return config.lookalikes.map(
    ({ name, meant }) => `${name} is not a cadenza setting; did you mean ${meant}?`,
  );
}

/**
 * Checks, before the database is migrated or a key generated, that cadenza
 * can start: the TLS files, the ports, and the database (see
 * {@link checkDatabase}). Throws every problem found, each a
 * {@link StartupError} of one line (an AggregateError of them when several).
 * None of the checks leaves anything behind.
 */
export async function preflight(config: Config): Promise<void> {
  const found = await Promise.all([
    checkTls(config.tls),
    checkPorts(config),
    checkDatabase(config),
  ]);
  throwProblems(found.flat());
}

/**
 * The database checks, which the CLI shares: with DATABASE_URL, one
 * connection runs `SELECT 1` (src/db/postgres-check.ts); with PGlite,
 * DATA_DIR must be a directory this user can write, held by no other live
 * process (src/db/data-dir-lock.ts).
 */
export async function checkDatabase(
  config: Pick<Config, "databaseUrl" | "databaseConnectTimeoutMs" | "dataDir">,
): Promise<StartupError[]> {
  if (config.databaseUrl !== undefined) {
    // Loaded only when used: start-up time is measured (BENCHMARKS.md, row 7).
    const { checkPostgres } = await import("./db/postgres-check.js");
    const problem = await checkPostgres(config.databaseUrl, config.databaseConnectTimeoutMs);
    return problem === undefined ? [] : [problem];
  }
  if (config.dataDir === inMemory) return [];
  const problem = await checkDataDir(config.dataDir);
  return problem === undefined ? [] : [problem];
}

/** Throws nothing for no problems, the one problem alone, or several as an AggregateError. */
export function throwProblems(problems: readonly StartupError[]): void {
  const [first, ...rest] = problems;
  if (first === undefined) return;
  if (rest.length === 0) throw first;
  throw new AggregateError(problems, "cadenza cannot start");
}

/** One of cadenza's listeners, by the variables that configure it. */
interface ListenerSettings {
  readonly variable: "PORT" | "INTERNAL_PORT";
  readonly hostVariable: "HOST" | "INTERNAL_HOST";
  readonly host: string;
  readonly port: number;
}

function listenersOf(config: Pick<Config, "host" | "port" | "internal">): ListenerSettings[] {
  return [
    { variable: "PORT", hostVariable: "HOST", host: config.host, port: config.port },
    {
      variable: "INTERNAL_PORT",
      hostVariable: "INTERNAL_HOST",
      host: config.internal.host,
      port: config.internal.port,
    },
  ];
}

/**
 * Binds a throwaway server on each listener's host and port (0, any free
 * port, is skipped) and closes it. They are bound one after the other and
 * closed together, so PORT and INTERNAL_PORT set to one address conflict here
 * as they would when serving.
 */
export async function checkPorts(
  config: Pick<Config, "host" | "port" | "internal">,
): Promise<StartupError[]> {
  const bound: Server[] = [];
  const problems: StartupError[] = [];
  try {
    for (const listener of listenersOf(config)) {
      if (listener.port === 0) continue;
      const server = createServer();
      try {
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen({ host: listener.host, port: listener.port, exclusive: true }, resolve);
        });
        bound.push(server);
      } catch (err) {
        const problem = listenProblem(listener, err);
        if (problem === undefined) throw err;
        problems.push(problem);
      }
    }
  } finally {
    await Promise.all(bound.map((s) => new Promise((resolve) => s.close(resolve))));
  }
  return problems;
}

/**
 * The one line for a listener that cannot listen, naming its variable; or
 * undefined for an error that is not about the address. main also uses it
 * when the real listener fails (a port taken after the check).
 */
export function listenFailure(
  config: Pick<Config, "host" | "port" | "internal">,
  err: unknown,
): StartupError | undefined {
  const { syscall, port } = (err ?? {}) as { syscall?: unknown; port?: unknown };
  if (syscall !== "listen") return undefined;
  const listener = listenersOf(config).find((l) => l.port === port);
  return listener === undefined ? undefined : listenProblem(listener, err);
}

function listenProblem(l: ListenerSettings, err: unknown): StartupError | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const at = `${l.variable}=${l.port} on ${l.hostVariable}=${l.host}`;
  switch (code) {
    case "EADDRINUSE":
      return new StartupError(
        `${at} is in use (EADDRINUSE): another process listens there; stop it, or choose another ${l.variable}`,
        { cause: err },
      );
    case "EACCES":
      return new StartupError(
        `${at} is not permitted for this user (EACCES): ports below 1024 need privileges (CAP_NET_BIND_SERVICE); choose a ${l.variable} from 1024 up`,
        { cause: err },
      );
    case "EADDRNOTAVAIL":
      return new StartupError(
        `${l.hostVariable}=${l.host} is not an address of this machine (EADDRNOTAVAIL): use one of its addresses, or 0.0.0.0 for all`,
        { cause: err },
      );
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new StartupError(
        `${l.hostVariable}=${l.host} does not resolve (${code}): use an address, or a name of this machine`,
        { cause: err },
      );
    default:
      return undefined;
  }
}

/**
 * TLS_CERT and TLS_KEY: both readable files, a PEM certificate and a PEM
 * private key that belong together and that Node's TLS accepts.
 */
export async function checkTls(tls: Config["tls"]): Promise<StartupError[]> {
  if (tls === undefined) return [];
  const [cert, key] = await Promise.all([
    readTlsFile("TLS_CERT", tls.certFile),
    readTlsFile("TLS_KEY", tls.keyFile),
  ]);
  if (cert instanceof StartupError || key instanceof StartupError) {
    return [cert, key].filter((f): f is StartupError => f instanceof StartupError);
  }
  const certificate = parseCertificate(tls.certFile, cert);
  const privateKey = parsePrivateKey(tls.keyFile, key);
  if (certificate instanceof StartupError || privateKey instanceof StartupError) {
    return [certificate, privateKey].filter((f): f is StartupError => f instanceof StartupError);
  }
  const both = `TLS_CERT=${tls.certFile} and TLS_KEY=${tls.keyFile}`;
  if (!certificate.checkPrivateKey(privateKey)) {
    return [
      new StartupError(
        `${both} are not a pair: the key does not belong to the certificate; use the key the certificate was issued for`,
      ),
    ];
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    return [new StartupError(`${both} cannot serve TLS: ${oneLine(err)}`, { cause: err })];
  }
  return [];
}

async function readTlsFile(
  variable: "TLS_CERT" | "TLS_KEY",
  path: string,
): Promise<Buffer | StartupError> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const uid = process.getuid?.();
    switch (code) {
      case "ENOENT":
        return new StartupError(`${variable}=${path} does not exist: give the path of a PEM file`);
      case "EACCES":
      case "EPERM":
        return new StartupError(
          `${variable}=${path} cannot be read by this user${uid === undefined ? "" : ` (uid ${uid})`} (${code}): make it readable by the user cadenza runs as`,
        );
      case "EISDIR":
        return new StartupError(`${variable}=${path} is a directory: give the path of a PEM file`);
      default:
        throw err;
    }
  }
}

const pemCertificate = /-----BEGIN CERTIFICATE-----/;
const pemPrivateKey = /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/;

function parseCertificate(path: string, pem: Buffer): X509Certificate | StartupError {
  const text = pem.toString("latin1");
  if (!pemCertificate.test(text)) {
    return new StartupError(
      pemPrivateKey.test(text)
        ? `TLS_CERT=${path} holds a private key, not a certificate: are TLS_CERT and TLS_KEY swapped?`
        : `TLS_CERT=${path} is not a PEM certificate (no "-----BEGIN CERTIFICATE-----" line)`,
    );
  }
  try {
    return new X509Certificate(pem);
  } catch (err) {
    return new StartupError(`TLS_CERT=${path} is not a valid PEM certificate: ${oneLine(err)}`, {
      cause: err,
    });
  }
}

function parsePrivateKey(path: string, pem: Buffer): KeyObject | StartupError {
  const text = pem.toString("latin1");
  if (!pemPrivateKey.test(text)) {
    return new StartupError(
      pemCertificate.test(text)
        ? `TLS_KEY=${path} holds a certificate, not a private key: are TLS_CERT and TLS_KEY swapped?`
        : `TLS_KEY=${path} is not a PEM private key (no "-----BEGIN PRIVATE KEY-----" line)`,
    );
  }
  try {
    return createPrivateKey(pem);
  } catch (err) {
    if ((err as { code?: unknown }).code === "ERR_MISSING_PASSPHRASE") {
      return new StartupError(
        `TLS_KEY=${path} is encrypted with a passphrase, which cadenza cannot be given: decrypt it (openssl pkey -in ${path} -out <new file>)`,
        { cause: err },
      );
    }
    return new StartupError(`TLS_KEY=${path} is not a valid PEM private key: ${oneLine(err)}`, {
      cause: err,
    });
  }
}

/** An error's message on one line. */
function oneLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, " ");
}
