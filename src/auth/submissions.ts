import type { Audit } from "../audit.js";
import type { Caller } from "../caller.js";
import type { Database, Queryable } from "../db/database.js";
import type { Mailer } from "../email/mailer.js";
import { type ErrorSpec, HarmonyError } from "../errors.js";
import type { AccountEventData, AccountEvents } from "../events/account-events.js";
import type { Limits } from "../limits/limits.js";
import type { AccountAdminStore } from "./account-admin.js";
import { emailKey } from "./account-rules.js";
import type { Accounts, PreparedRegistration } from "./accounts.js";
import { authErrors } from "./auth-errors.js";
import { codeErrors, type EmailCodes } from "./email-codes.js";
import {
  awaitSecondFactor,
  type CodePurpose,
  type FlowPolicy,
  type FlowState,
  finishedState,
  type PendingSecondFactor,
  type StepView,
  type Submission,
  sessionView,
  viewOf,
} from "./flow-machine.js";
import type { Invites } from "./invites.js";
import type { Passkeys } from "./passkeys.js";
import { sha256 } from "./random-ids.js";
import type { SecondFactor } from "./second-factor.js";
import type { Sessions } from "./sessions.js";
import type { StoredFlow } from "./stores.js";

/**
 * Carries out what a submitted form asks (the machine only names it): log
 * in (with a second-factor code where the account has one), register,
 * confirm an email, send a code, reset a password, delete an account, change
 * a password. The slow part (argon2id) runs outside any
 * transaction; the writes happen in one, which also appends the flow's next
 * step and so checks that the flow did not move meanwhile.
 */

/** What a submission needs of the flow it belongs to. */
export interface SubmissionContext {
  readonly flow: StoredFlow;
  /** The flow's lookup key (its auth_id's SHA-256): codes and audit lines are bound to it. */
  readonly flowKey: Buffer;
  readonly caller: Caller;
  /** Where the flow goes on success. */
  readonly next: FlowState | "session";
  /** Appends the flow's next step (and state) in `q`; false when the flow moved first. */
  append(q: Queryable, state: FlowState, step: StepView): Promise<boolean>;
}

export type SubmissionsDeps = {
  readonly db: Database;
  readonly policy: FlowPolicy;
  readonly accounts: Accounts;
  readonly sessions: Sessions;
  readonly events: Pick<AccountEvents, "record">;
  readonly limits: Pick<Limits, "rate" | "rateFor" | "loginAttempt" | "loginSucceeded">;
  readonly audit: Audit;
  readonly invites: Pick<Invites, "check" | "consume">;
  readonly codes: EmailCodes;
  readonly mailer: Mailer | undefined;
  readonly accountStore: Pick<AccountAdminStore, "deleteSessions" | "delete">;
  readonly secondFactor: Pick<SecondFactor, "enabled" | "check" | "spend">;
  readonly passkeys: Pick<Passkeys, "verifySignIn" | "recordSignIn">;
  readonly logger: { error(obj: object, msg: string): void; debug(obj: object, msg: string): void };
};

/** The audit reason of each way a second-factor code is refused. */
const secondFactorRefusals: ReadonlyMap<ErrorSpec, string> = new Map<ErrorSpec, string>([
  [authErrors.badSecondFactor, "bad-second-factor"],
  [authErrors.secondFactorReplayed, "second-factor-replayed"],
  [authErrors.userDisabled, "disabled"],
]);

/** A registration waiting for its email's code, as the code's row keeps it. */
interface PendingRegistration extends PreparedRegistration {
  readonly invite: string | undefined;
}

export function createSubmissions(deps: SubmissionsDeps) {
  const { db, policy, accounts, sessions, events, limits, audit, invites, codes, mailer } = deps;

  const reasonOf = (err: unknown): string =>
    err instanceof HarmonyError
      ? (err.identifier.replace(/^h\./, "").split("\n")[0] ?? "")
      : "error";

  /** Writes `work` and the flow's next step in one transaction. */
  const commit = async <T>(
    c: SubmissionContext,
    work: (tx: Queryable) => Promise<{ result: T; step: StepView; state: FlowState }>,
  ): Promise<T> =>
    db.transaction(async (tx) => {
      const { result, step, state } = await work(tx);
      if (!(await c.append(tx, state, step))) throw new HarmonyError(authErrors.flowConflict);
      return result;
    });

  /** Where the flow stands after a step that does not end it. */
  const nextState = (c: SubmissionContext): FlowState =>
    c.next === "session" ? c.flow.state : c.next;

  /** A new session for `userId`, as the flow's last step, with `work` in its transaction. */
  const finishWithSession = async (
    c: SubmissionContext,
    userId: bigint,
    work: (tx: Queryable) => Promise<AccountEventData | undefined>,
  ): Promise<StepView> =>
    commit(c, async (tx) => {
      const event = await work(tx);
      const step = sessionView(userId, await sessions.create(tx, userId, c.caller));
      // Last: recording an event takes the lock that orders events.
      if (event) await events.record(tx, userId, event);
      // A pending login (and a new password's hash) is not kept in a spent flow.
      return { result: step, step, state: { stack: c.flow.state.stack } };
    });

  /**
   * When the account has a second factor, moves the flow to the `totp` form
   * instead of finishing it (the password was right; `work` runs in that
   * step's transaction) and returns that step; undefined otherwise. The
   * login schedule's count is not reset: only the code's success does that,
   * or a known password would buy unlimited guesses at codes.
   */
  const secondFactorStep = async (
    c: SubmissionContext,
    pending: PendingSecondFactor,
    work: (tx: Queryable) => Promise<void>,
  ): Promise<StepView | undefined> => {
    if (!(await deps.secondFactor.enabled(pending.userId))) return undefined;
    const state = awaitSecondFactor(c.flow.state, pending);
    const step = viewOf(state, policy);
    await commit(c, async (tx) => {
      await work(tx);
      return { result: undefined, step, state };
    });
    audit.record("login.second_factor_required", {
      caller: c.caller,
      flowKey: c.flowKey,
      userId: pending.userId,
    });
    return step;
  };

  /** The account's credential epoch, which a pending second factor remembers. */
  const epochOf = async (userId: bigint): Promise<number> =>
    (await accounts.credentialEpoch(db, userId)) ?? -1;

  /** Ends every session of `userId` but `keep`, in `tx`, with its event. */
  const endSessions = async (tx: Queryable, userId: bigint, keep?: string): Promise<string[]> => {
    const ended = await deps.accountStore.deleteSessions(tx, userId, undefined, keep);
    if (ended.length > 0) {
      await events.record(tx, userId, { kind: "sessions_revoked", sessionIds: ended });
    }
    return ended;
  };

  /** Sends a code without awaiting it, so timing does not tell known addresses from unknown. */
  const sendInBackground = (to: string, purpose: CodePurpose, code: string): void => {
    mailer?.sendCode(to, purpose, code).catch((err: unknown) => {
      // The mailer logged what failed (never the address); this says which flow step lost it.
      deps.logger.debug({ err: (err as Error).message, purpose }, "a code email was not sent");
    });
  };

  /** The per-account and per-address budgets for emails with codes. */
  const emailBudget = async (email: string, caller: Caller): Promise<void> => {
    await limits.rate("emailsPerAddress", caller);
    await limits.rateFor("emailsPerAccount", sha256(emailKey(email)).toString("hex"), caller);
  };

  async function login(c: SubmissionContext, email: string, password: string) {
    // Keyed by the email whether or not an account has it, so unknown and
    // known emails are throttled alike; while delayed, no password is checked.
    const throttleKey = sha256(emailKey(email));
    await limits.loginAttempt(throttleKey, c.caller, c.flowKey);
    const verified = await accounts.verifyLogin(email, password).catch((err) => {
      const disabled = err instanceof HarmonyError && err.spec === authErrors.userDisabled;
      audit.record("login.failed", {
        caller: c.caller,
        flowKey: c.flowKey,
        reason: disabled ? "disabled" : "bad-credentials",
      });
      throw err;
    });
    return { verified, throttleKey };
  }

  async function register(c: SubmissionContext, s: Extract<Submission, { kind: "register" }>) {
    await limits.rate("registrations", c.caller);
    const { emailTaken, ...prepared } = await (async () => {
      if (policy.invites) await invites.check(s.invite ?? "");
      // With verification, only the mailbox may learn that the address has an account.
      return accounts.prepareRegistration(s, { emailPrivate: c.next !== "session" });
    })().catch((err) => {
      audit.record("registration.refused", {
        caller: c.caller,
        flowKey: c.flowKey,
        reason: reasonOf(err),
      });
      throw err;
    });
    if (c.next === "session") return createAccount(c, { ...prepared, invite: s.invite });
    // EMAIL_VERIFICATION=required: the account waits in the code's row.
    await emailBudget(prepared.email, c.caller);
    const state = nextState(c);
    const step = viewOf(state, policy);
    const code = await commit(c, async (tx) => ({
      result: await codes.issue(tx, c.flowKey, "verify-email", null, {
        ...prepared,
        invite: s.invite,
      } satisfies PendingRegistration),
      step,
      state,
    }));
    if (emailTaken) {
      // The same step and the same work as for a new address; the code made is
      // never sent, and the owner hears that someone tried.
      audit.record("registration.refused", {
        caller: c.caller,
        flowKey: c.flowKey,
        reason: "email-taken",
      });
      mailer?.sendAlreadyRegistered(prepared.email).catch((err: unknown) => {
        deps.logger.debug(
          { err: (err as Error).message },
          "an already-registered email was not sent",
        );
      });
    } else {
      sendInBackground(prepared.email, "verify-email", code);
    }
    return step;
  }

  async function createAccount(c: SubmissionContext, pending: PendingRegistration) {
    let userId = 0n;
    const step = await commit(c, async (tx) => {
      if (policy.invites) await invites.consume(tx, pending.invite ?? "");
      userId = await accounts.createAccount(tx, pending);
      const session = sessionView(userId, await sessions.create(tx, userId, c.caller));
      await events.record(tx, userId, { kind: "registered", username: pending.username });
      return { result: session, step: session, state: c.flow.state };
    }).catch((err) => {
      audit.record("registration.refused", {
        caller: c.caller,
        flowKey: c.flowKey,
        reason: reasonOf(err),
      });
      throw err;
    });
    audit.record("registration.succeeded", { caller: c.caller, flowKey: c.flowKey, userId });
    return step;
  }

  async function verifyEmail(c: SubmissionContext, code: string) {
    const found = await codes.check(c.flowKey, "verify-email", code);
    const pending = found.payload as PendingRegistration;
    // Spent in the account's own transaction: a failure leaves the code usable.
    return createAccount(
      {
        ...c,
        append: async (tx, state, step) => {
          await codes.spend(tx, c.flowKey, "verify-email", code);
          return c.append(tx, state, step);
        },
      },
      pending,
    );
  }

  async function sendCode(c: SubmissionContext, purpose: CodePurpose, email: string) {
    await emailBudget(email, c.caller);
    const user = await accounts.findLocal(email);
    const state = nextState(c);
    const step = viewOf(state, policy);
    // The same steps, writes and answer whether or not an account has the address.
    const code = await commit(c, async (tx) => ({
      result: await codes.issue(tx, c.flowKey, purpose, user?.userId ?? null),
      step,
      state,
    }));
    if (user) sendInBackground(user.email, purpose, code);
    return step;
  }

  /** The account a correct code was sent for; the code stays unspent. */
  async function codeOwner(c: SubmissionContext, purpose: CodePurpose, code: string) {
    const found = await codes.check(c.flowKey, purpose, code);
    if (found.userId === null) throw new HarmonyError(codeErrors.invalidCode);
    return found.userId;
  }

  async function resetPassword(c: SubmissionContext, code: string, newPassword: string) {
    const userId = await codeOwner(c, "reset-password", code);
    const owner = await accountOf(userId);
    const hash = await accounts.prepareNewPassword(newPassword, owner);
    const state = nextState(c);
    const step = viewOf(state, policy);
    await commit(c, async (tx) => {
      await codes.spend(tx, c.flowKey, "reset-password", code);
      await accounts.setPassword(tx, userId, hash);
      // A reset ends every session of the account.
      const ended = await endSessions(tx, userId);
      return { result: ended, step, state };
    });
    sessions.evict({ userId });
    audit.record("password.reset", { caller: c.caller, flowKey: c.flowKey, userId });
    return step;
  }

  async function deleteUser(c: SubmissionContext, code: string) {
    const userId = await codeOwner(c, "delete-user", code);
    // With a second factor on, the mailbox alone does not delete the account:
    // the emailed code is spent here, and the `totp` step asks for the other.
    const asked = await secondFactorStep(
      c,
      { userId, epoch: await epochOf(userId), completes: { kind: "delete-user" } },
      (tx) => codes.spend(tx, c.flowKey, "delete-user", code),
    );
    if (asked) return asked;
    return finishDeletion(c, userId, (tx) => codes.spend(tx, c.flowKey, "delete-user", code));
  }

  /** Deletes the account, with `inTx` (what proved the request) in the same transaction. */
  async function finishDeletion(
    c: SubmissionContext,
    userId: bigint,
    inTx: (tx: Queryable) => Promise<void>,
  ): Promise<StepView> {
    const state = finishedState(c.flow.state);
    const step = viewOf(state, policy);
    await commit(c, async (tx) => {
      await inTx(tx);
      await deps.accountStore.delete(tx, userId);
      await events.record(tx, userId, { kind: "deleted" });
      return { result: undefined, step, state };
    });
    sessions.evict({ userId });
    audit.record("account.deleted", { caller: c.caller, flowKey: c.flowKey, userId });
    return step;
  }

  async function changePassword(
    c: SubmissionContext,
    s: Extract<Submission, { kind: "change-password" }>,
  ) {
    const { verified, throttleKey } = await login(c, s.email, s.password);
    const owner = await accountOf(verified.userId);
    const hash = await accounts.prepareNewPassword(s.newPassword, owner);
    const pending = {
      userId: verified.userId,
      epoch: await epochOf(verified.userId),
      completes: { kind: "change-password", passwordHash: hash },
    } as const;
    const asked = await secondFactorStep(c, pending, async () => {});
    if (asked) return asked;
    return completeChangePassword(c, verified.userId, hash, throttleKey);
  }

  /** Sets the new password and ends every other session, finishing the flow with a new one. */
  async function completeChangePassword(
    c: SubmissionContext,
    userId: bigint,
    hash: string,
    throttleKey: Buffer,
    inTx: (tx: Queryable) => Promise<void> = async () => {},
  ) {
    const step = await finishWithSession(c, userId, async (tx) => {
      await inTx(tx);
      await accounts.setPassword(tx, userId, hash);
      // Every other session ends: the new one is made after this.
      const ended = await deps.accountStore.deleteSessions(tx, userId, undefined);
      return ended.length > 0 ? { kind: "sessions_revoked", sessionIds: ended } : undefined;
    });
    sessions.evict({ userId });
    await limits.loginSucceeded(throttleKey);
    audit.record("password.changed", { caller: c.caller, flowKey: c.flowKey, userId });
    return step;
  }

  /** Completes a login (or change-password, or deletion) with a code, spent in the same transaction. */
  async function completeWithCode(
    c: SubmissionContext,
    code: string,
    pending: PendingSecondFactor,
  ) {
    const { userId } = pending;
    const owner = await accounts.ownerOf(userId);
    if (!owner) throw new HarmonyError(authErrors.badSecondFactor);
    // The same per-account schedule as the password's: wrong codes count.
    const throttleKey = sha256(emailKey(owner.email));
    await limits.loginAttempt(throttleKey, c.caller, c.flowKey);
    const refused = (err: unknown): never => {
      const reason = err instanceof HarmonyError ? secondFactorRefusals.get(err.spec) : undefined;
      if (reason) {
        audit.record("login.failed", { caller: c.caller, flowKey: c.flowKey, userId, reason });
      }
      throw err;
    };
    const checked = await deps.secondFactor.check(userId, code).catch(refused);
    const spend = async (tx: Queryable) => {
      // A reset or change of the password since it was entered here voids the
      // pending login: whoever knew the old one is shut out even half-way.
      // The row stays locked to the commit, so a reset cannot slip between.
      if ((await accounts.credentialEpoch(tx, userId, true)) !== pending.epoch) {
        throw new HarmonyError(authErrors.passwordChanged);
      }
      await deps.secondFactor.spend(tx, userId, checked);
    };
    const { completes } = pending;
    const step =
      completes.kind === "change-password"
        ? await completeChangePassword(c, userId, completes.passwordHash, throttleKey, spend).catch(
            refused,
          )
        : completes.kind === "delete-user"
          ? await finishDeletion(c, userId, spend).catch(refused)
          : await finishWithSession(c, userId, async (tx) => {
              await spend(tx);
              return undefined;
            }).catch(refused);
    if (checked.kind === "recovery") {
      audit.record("recovery_code.used", { caller: c.caller, flowKey: c.flowKey, userId });
    }
    if (completes.kind === "login") {
      await limits.loginSucceeded(throttleKey);
      audit.record("login.succeeded", { caller: c.caller, flowKey: c.flowKey, userId });
    }
    return step;
  }

  /**
   * A passkey sign-in: the assertion verified against the flow's challenge
   * (spent, used or not), then the session. No second-factor step follows:
   * a passkey with user verification (required) is itself two factors, the
   * device and the PIN or biometric that unlocks it, and cannot be phished.
   */
  async function passkeySignIn(c: SubmissionContext, assertion: string) {
    const verified = await deps.passkeys.verifySignIn(c.flowKey, assertion, c.caller);
    const step = await finishWithSession(c, verified.userId, async (tx) => {
      await deps.passkeys.recordSignIn(tx, verified);
      return undefined;
    }).catch((err: unknown) => {
      audit.record("login.failed", {
        caller: c.caller,
        flowKey: c.flowKey,
        userId: verified.userId,
        reason: reasonOf(err),
      });
      throw err;
    });
    audit.record("login.succeeded", {
      caller: c.caller,
      flowKey: c.flowKey,
      userId: verified.userId,
      method: "passkey",
    });
    return step;
  }

  /** The email and name a new password must not contain. */
  async function accountOf(userId: bigint) {
    const owner = await accounts.ownerOf(userId);
    if (!owner) throw new HarmonyError(codeErrors.invalidCode);
    return owner;
  }

  return {
    /** Carries out a submission; returns the step the flow now stands on. */
    async carryOut(c: SubmissionContext, s: Submission): Promise<StepView> {
      switch (s.kind) {
        case "login": {
          const { verified, throttleKey } = await login(c, s.email, s.password);
          const asked = await secondFactorStep(
            c,
            {
              userId: verified.userId,
              epoch: await epochOf(verified.userId),
              completes: { kind: "login" },
            },
            (tx) => accounts.finishLogin(tx, verified),
          );
          if (asked) return asked;
          const step = await finishWithSession(c, verified.userId, async (tx) => {
            await accounts.finishLogin(tx, verified);
            return undefined;
          });
          await limits.loginSucceeded(throttleKey);
          audit.record("login.succeeded", {
            caller: c.caller,
            flowKey: c.flowKey,
            userId: verified.userId,
          });
          return step;
        }
        case "register":
          return register(c, s);
        case "verify-email":
          return verifyEmail(c, s.code);
        case "send-code":
          return sendCode(c, s.purpose, s.email);
        case "reset-password":
          return resetPassword(c, s.code, s.newPassword);
        case "delete-user":
          return deleteUser(c, s.code);
        case "change-password":
          return changePassword(c, s);
        case "second-factor":
          return completeWithCode(c, s.code, s.pending);
        case "passkey":
          return passkeySignIn(c, s.assertion);
      }
    },
  };
}

export type Submissions = ReturnType<typeof createSubmissions>;
