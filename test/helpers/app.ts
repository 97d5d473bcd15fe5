import { type Client, createClient, createRouterTransport } from "@connectrpc/connect";
import { type Logger, pino } from "pino";
import { type AppContext, createAppContext } from "../../src/app-context.js";
import { createArgon2Hasher, type PasswordHasher } from "../../src/auth/password-hasher.js";
import { type Config, loadConfig } from "../../src/config.js";
import type { Database } from "../../src/db/database.js";
import { AccountService } from "../../src/gen/cadenza/account/v1/account_pb.js";
import { AdminService } from "../../src/gen/cadenza/admin/v1/admin_pb.js";
import { HomeserverService } from "../../src/gen/cadenza/homeserver/v1/homeserver_pb.js";
import { AuthService } from "../../src/gen/protocol/auth/v1/auth_pb.js";
import { connectRoutes, internalConnectRoutes } from "../../src/server/build-app.js";
import { createFakeClock, type FakeClock } from "./clock.js";

/**
 * The abuse limits, off: tests make many flows from one address in moments.
 * Tests of the limits turn them on with the same variables.
 */
export const limitsOff: Record<string, string> = {
  LOGIN_FAILURES_BEFORE_DELAY: "off",
  LIMIT_BEGIN_AUTH: "off",
  LIMIT_FORMS: "off",
  LIMIT_REGISTRATIONS: "off",
  LIMIT_LOGIN_FEDERATED: "off",
  LIMIT_FEDERATE: "off",
  LIMIT_EMAILS_PER_ACCOUNT: "off",
  LIMIT_EMAILS_PER_ADDRESS: "off",
  LIMIT_LIVE_FLOWS: "off",
  LIMIT_STREAMS_PER_ADDRESS: "off",
  MAX_OPEN_STREAMS: "off",
  ARGON2_MAX_QUEUED: "100000",
};

/** Configuration for tests: in-memory, any port, quiet, limits off. */
export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({
    DATA_DIR: "memory://",
    PORT: "0",
    INTERNAL_PORT: "0",
    SHUTDOWN_DRAIN: "0s",
    LOG_LEVEL: "silent",
    ...limitsOff,
    ...env,
  });
}

/** Real argon2id with the smallest parameters, so tests stay fast. */
export const fastHasher: PasswordHasher = createArgon2Hasher({
  memoryKib: 64,
  iterations: 1,
  parallelism: 1,
});

/** A hasher that counts verifications, to check that every login path costs the same. */
export function countingHasher(inner: PasswordHasher = fastHasher) {
  const calls = { hash: 0, verify: [] as string[] };
  const hasher: PasswordHasher = {
    hash: (p) => {
      calls.hash++;
      return inner.hash(p);
    },
    verify: (phc, p) => {
      calls.verify.push(phc);
      return inner.verify(phc, p);
    },
    needsRehash: (phc) => inner.needsRehash(phc),
  };
  return { hasher, calls };
}

export interface TestApp {
  readonly ctx: AppContext;
  readonly clock: FakeClock;
  /** An AuthService client calling the handlers in memory, through the real interceptors. */
  readonly client: Client<typeof AuthService>;
  /** A HomeserverService client calling the internal port's handlers in memory. */
  readonly homeserver: Client<typeof HomeserverService>;
  /** An AdminService client, the same way. */
  readonly admin: Client<typeof AdminService>;
  /** An AccountService client on the public port's handlers. */
  readonly account: Client<typeof AccountService>;
  close(): Promise<void>;
}

/** An AppContext on `db` with a fake clock and a fast hasher. */
export async function createTestApp(
  db: Database,
  options: {
    env?: Record<string, string>;
    hasher?: PasswordHasher;
    clock?: FakeClock;
    logger?: Logger;
  } = {},
): Promise<TestApp> {
  const clock = options.clock ?? createFakeClock(Date.now());
  const ctx = await createAppContext(testConfig(options.env), {
    db,
    clock,
    hasher: options.hasher ?? fastHasher,
    logger: options.logger ?? pino({ level: "silent" }),
    background: false,
  });
  const transport = (r: ReturnType<typeof connectRoutes>) =>
    createRouterTransport(r.routes, { router: { interceptors: r.interceptors } });
  return {
    ctx,
    clock,
    client: createClient(AuthService, transport(connectRoutes(ctx))),
    homeserver: createClient(HomeserverService, transport(internalConnectRoutes(ctx))),
    admin: createClient(AdminService, transport(internalConnectRoutes(ctx))),
    account: createClient(AccountService, transport(connectRoutes(ctx))),
    close: () => ctx.close(),
  };
}
