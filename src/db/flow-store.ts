import {
  type ClientFeature,
  type FlowState,
  type PendingSecondFactor,
  type StepName,
  stepNames,
} from "../auth/flow-machine.js";
import type {
  FlowStore,
  StepNotificationHandlers,
  StoredFlow,
  StoredStep,
} from "../auth/stores.js";
import { type Database, many, maybeOne, type Queryable } from "./database.js";

/** The channel steps are announced on; payload `hex(flow key):seq:base64(sealed step)`. */
export const stepChannel = "cadenza_auth_flow_steps";

const knownSteps: ReadonlySet<string> = new Set<string>(stepNames);

/**
 * A flow state as JSON. A pending second factor's user ID is a decimal
 * string (JSON has no 64-bit integers); its new password's hash, when there
 * is one, is an argon2id PHC string, as users.password_hash keeps it.
 */
function stateJson(state: FlowState): string {
  const { stack, secondFactor, features } = state;
  return JSON.stringify({
    stack,
    ...(secondFactor
      ? { secondFactor: { ...secondFactor, userId: secondFactor.userId.toString() } }
      : {}),
    ...(features ? { features } : {}),
  });
}

const knownFeatures: ReadonlySet<string> = new Set<ClientFeature>(["passkey"]);

function parsePending(value: unknown): PendingSecondFactor {
  const p = value as {
    userId?: unknown;
    epoch?: unknown;
    completes?: { kind?: unknown; passwordHash?: unknown };
  };
  const then = p.completes;
  // A pending login written before epochs were kept matches no account's epoch.
  const epoch = typeof p.epoch === "number" && Number.isInteger(p.epoch) ? p.epoch : -1;
  if (typeof p.userId === "string" && /^\d{1,20}$/.test(p.userId)) {
    const userId = BigInt(p.userId);
    if (then?.kind === "login") return { userId, epoch, completes: { kind: "login" } };
    if (then?.kind === "delete-user") return { userId, epoch, completes: { kind: "delete-user" } };
    if (then?.kind === "change-password" && typeof then.passwordHash === "string") {
      return {
        userId,
        epoch,
        completes: { kind: "change-password", passwordHash: then.passwordHash },
      };
    }
  }
  throw new Error("auth_flows.state has an invalid pending second factor");
}

function parseState(value: unknown): FlowState {
  const { stack, secondFactor, features } =
    (value as { stack?: unknown; secondFactor?: unknown; features?: unknown } | null) ?? {};
  if (
    !Array.isArray(stack) ||
    stack.length === 0 ||
    !stack.every((s) => typeof s === "string" && knownSteps.has(s)) ||
    (features !== undefined &&
      (!Array.isArray(features) ||
        !features.every((f) => typeof f === "string" && knownFeatures.has(f))))
  ) {
    throw new Error("auth_flows.state is not a valid flow state");
  }
  return {
    stack: stack as StepName[],
    ...(secondFactor === undefined ? {} : { secondFactor: parsePending(secondFactor) }),
    ...(features === undefined ? {} : { features: features as ClientFeature[] }),
  };
}

interface FlowRow {
  state: unknown;
  version: number;
  step_count: number;
  done: boolean;
  expires_at: Date;
}

/** Auth flows and their step logs in Postgres, with steps announced by NOTIFY. */
export function createFlowStore(): FlowStore {
  return {
    async insert(q, key, state, now, expiresAt, clientAddress, maxLive) {
      // The count and the insert in one statement (concurrent BeginAuths from
      // one address may overshoot the cap by as many as run at once, no more).
      const result = await q.query(
        `INSERT INTO auth_flows (key, state, created_at, expires_at, client_address)
         SELECT $1, $2, $3, $4, $5
          WHERE $6::int4 IS NULL
             OR (SELECT count(*) FROM auth_flows
                  WHERE client_address = $5 AND NOT done AND expires_at > $3) < $6::int4`,
        [key, stateJson(state), new Date(now), new Date(expiresAt), clientAddress, maxLive ?? null],
      );
      return result.rowCount === 1;
    },

    async load(q, key): Promise<StoredFlow | undefined> {
      const row = await maybeOne<FlowRow>(
        q,
        "SELECT state, version, step_count, done, expires_at FROM auth_flows WHERE key = $1",
        [key],
      );
      if (!row) return undefined;
      return {
        state: parseState(row.state),
        version: row.version,
        stepCount: row.step_count,
        done: row.done,
        expiresAt: row.expires_at.getTime(),
      };
    },

    async appendStep(q, key, version, next, sealed) {
      // One statement: the state update, the log row and the notification
      // happen together or not at all, and NOTIFY is delivered on commit.
      const row = await maybeOne<{ seq: number }>(
        q,
        `WITH flow AS (
           UPDATE auth_flows
              SET state = $3, done = $4, expires_at = least(expires_at, $5),
                  version = version + 1, step_count = step_count + 1
            WHERE key = $1 AND version = $2 AND NOT done
        RETURNING key, step_count
         ), step AS (
           INSERT INTO auth_flow_steps (flow_key, seq, sealed)
           SELECT key, step_count, $6 FROM flow
        RETURNING seq
         )
         SELECT seq, pg_notify($7, $8 || ':' || seq || ':' || $9) FROM step`,
        [
          key,
          version,
          stateJson(next.state),
          next.done,
          new Date(next.expiresAt),
          sealed,
          stepChannel,
          key.toString("hex"),
          Buffer.from(sealed).toString("base64"),
        ],
      );
      return row?.seq;
    },

    async stepsAfter(q: Queryable, key, seq): Promise<StoredStep[]> {
      return many<StoredStep>(
        q,
        "SELECT seq, sealed FROM auth_flow_steps WHERE flow_key = $1 AND seq > $2 ORDER BY seq",
        [key, seq],
      );
    },

    async readLog(q: Queryable, key, seq) {
      const rows = await many<{
        done: boolean;
        expires_at: Date;
        seq: number | null;
        sealed: Uint8Array | null;
      }>(
        q,
        `SELECT f.done, f.expires_at, s.seq, s.sealed
           FROM auth_flows f
           LEFT JOIN auth_flow_steps s ON s.flow_key = f.key AND s.seq > $2
          WHERE f.key = $1
          ORDER BY s.seq`,
        [key, seq],
      );
      const first = rows[0];
      if (!first) return undefined;
      const steps: StoredStep[] = [];
      for (const row of rows) {
        if (row.seq !== null && row.sealed !== null)
          steps.push({ seq: row.seq, sealed: row.sealed });
      }
      return { done: first.done, expiresAt: first.expires_at.getTime(), steps };
    },

    listenSteps(db: Database, handlers: StepNotificationHandlers) {
      return db.listen(stepChannel, {
        message(payload) {
          const [keyHex, seq, sealed] = payload.split(":");
          if (keyHex === undefined || seq === undefined || sealed === undefined) return;
          handlers.step(Buffer.from(keyHex, "hex"), {
            seq: Number(seq),
            sealed: Buffer.from(sealed, "base64"),
          });
        },
        reconnected: () => handlers.reconnected(),
      });
    },

    async countLive(q, now) {
      const row = await maybeOne<{ n: bigint }>(
        q,
        "SELECT count(*) AS n FROM auth_flows WHERE NOT done AND expires_at > $1",
        [new Date(now)],
      );
      return Number(row?.n ?? 0);
    },

    async deleteExpired(q, now) {
      const result = await q.query("DELETE FROM auth_flows WHERE expires_at <= $1", [
        new Date(now),
      ]);
      return result.rowCount;
    },
  };
}
