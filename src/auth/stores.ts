import type { Caller } from "../caller.js";
import type { Database, Queryable } from "../db/database.js";
import type { FlowRecord, FlowState } from "./flow-machine.js";

/**
 * The storage the auth feature needs, implemented in src/db. Methods take the
 * Queryable to run on, so one transaction can span several stores.
 */

export interface StoredFlow extends FlowRecord {
  readonly version: number;
  readonly stepCount: number;
}

export interface StoredStep {
  readonly seq: number;
  readonly sealed: Uint8Array;
}

export interface StepNotificationHandlers {
  step(flowKey: Buffer, step: StoredStep): void;
  /** Notifications may have been lost: every subscriber must re-read its log. */
  reconnected(): void;
}

/** A flow's log as a stream reads it (see {@link FlowStore.readLog}). */
export interface FlowLog {
  readonly done: boolean;
  readonly expiresAt: number;
  readonly steps: StoredStep[];
}

export interface FlowStore {
  /**
   * Inserts a new flow begun from `clientAddress`, unless that address already
   * has `maxLive` unfinished, unexpired flows (then false).
   */
  insert(
    q: Queryable,
    key: Buffer,
    state: FlowState,
    now: number,
    expiresAt: number,
    clientAddress: string,
    maxLive: number | undefined,
  ): Promise<boolean>;
  load(q: Queryable, key: Buffer): Promise<StoredFlow | undefined>;
  /**
   * Saves a flow's next state and appends its sealed step as one statement,
   * when the flow is still at `version`; listeners hear of the step when the
   * surrounding transaction commits. Returns the step's sequence number, or
   * undefined when another call changed the flow first.
   */
  appendStep(
    q: Queryable,
    key: Buffer,
    version: number,
    next: { state: FlowState; done: boolean; expiresAt: number },
    sealed: Uint8Array,
  ): Promise<number | undefined>;
  stepsAfter(q: Queryable, key: Buffer, seq: number): Promise<StoredStep[]>;
  /**
   * What a stream needs when it attaches, in one read: whether the flow is
   * done and when it expires, and the steps it showed after `seq`; undefined
   * when there is no such flow.
   */
  readLog(q: Queryable, key: Buffer, seq: number): Promise<FlowLog | undefined>;
  listenSteps(db: Database, handlers: StepNotificationHandlers): Promise<() => Promise<void>>;
  deleteExpired(q: Queryable, now: number): Promise<number>;
  /** Flows neither finished nor expired. */
  countLive(q: Queryable, now: number): Promise<number>;
}

export interface StoredUser {
  readonly id: bigint;
  readonly email: string;
  readonly username: string;
  readonly passwordHash: string | null;
  readonly disabled: boolean;
}

export interface NewUser {
  readonly id: bigint;
  readonly email: string;
  readonly emailKey: string;
  readonly username: string;
  readonly usernameKey: string;
  readonly passwordHash: string;
  readonly createdAt: number;
}

export type InsertUserResult = "created" | "id-taken" | "email-taken" | "username-taken";

export interface UserStore {
  findByEmailKey(q: Queryable, emailKey: string): Promise<StoredUser | undefined>;
  findById(q: Queryable, id: bigint): Promise<StoredUser | undefined>;
  /** Whether an account has this email, and whether one has this username. */
  taken(
    q: Queryable,
    emailKey: string,
    usernameKey: string,
  ): Promise<{ readonly email: boolean; readonly username: boolean }>;
  /** Inserts a user. A taken email or username aborts the surrounding transaction. */
  insert(q: Queryable, user: NewUser): Promise<InsertUserResult>;
  /** Replaces a password hash, only if it is still `from`. */
  replacePasswordHash(q: Queryable, id: bigint, from: string, to: string): Promise<void>;
  /** Sets a new password hash (a reset or a change), moving the credential epoch on. */
  setPasswordHash(q: Queryable, id: bigint, hash: string): Promise<void>;
  /**
   * How many times the password was set; with `lock`, the row is locked for
   * the rest of the transaction, so a concurrent reset waits for it.
   */
  credentialEpoch(q: Queryable, id: bigint, lock?: boolean): Promise<number | undefined>;
}

export interface StoredSession {
  /** The session's opaque public ID (never the token or its hash). */
  readonly id: string;
  readonly userId: bigint;
  readonly createdAt: number;
  readonly lastSeenAt: number;
  /** The absolute end (SESSION_MAX_TTL after login). */
  readonly expiresAt: number;
  readonly user: SessionUser;
}

/** What a session carries of its user, for Introspect. */
export interface SessionUser {
  readonly username: string;
  /** The homeserver of a federated user; null for a local one. */
  readonly homeserver: string | null;
  /** A federated user's ID on their homeserver (uint64); 0 for a local one. */
  readonly foreignUserId: bigint;
}

export interface SessionStore {
  insert(
    q: Queryable,
    tokenHash: Buffer,
    userId: bigint,
    now: number,
    expiresAt: number,
    caller: Caller,
  ): Promise<void>;
  find(q: Queryable, tokenHash: Buffer): Promise<StoredSession | undefined>;
  touch(q: Queryable, tokenHash: Buffer, now: number): Promise<void>;
  deleteExpired(q: Queryable, now: number, idleCutoff: number): Promise<number>;
  /**
   * Hears of every deletion of sessions, by any process: the token hashes
   * (hex), or "all" when too many went at once or notifications may have
   * been lost.
   */
  listenDeletions(
    db: Database,
    onDeleted: (hashes: readonly string[] | "all") => void,
  ): Promise<() => Promise<void>>;
  /**
   * Hears of every change to a user that sessions carry (their name), by any
   * process: the user's ID, or "all" when notifications may have been lost.
   */
  listenUserChanges(
    db: Database,
    onChanged: (userId: bigint | "all") => void,
  ): Promise<() => Promise<void>>;
}
