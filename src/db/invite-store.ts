import type { Invite, InviteStore } from "../auth/invites.js";
import { many, maybeOne, one } from "./database.js";

interface InviteRow {
  id: string;
  note: string;
  max_uses: number;
  uses: number;
  created_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
}

const toInvite = (r: InviteRow): Invite => ({
  inviteId: r.id,
  note: r.note,
  maxUses: r.max_uses,
  uses: r.uses,
  createdAt: r.created_at.getTime(),
  expiresAt: r.expires_at.getTime(),
  revokedAt: r.revoked_at?.getTime(),
});

const columns = "id, note, max_uses, uses, created_at, expires_at, revoked_at";

/** Invites (migration 0006). */
export function createInviteStore(): InviteStore {
  return {
    async insert(q, invite) {
      return toInvite(
        await one<InviteRow>(
          q,
          `INSERT INTO invites (code_hash, note, max_uses, created_at, expires_at)
           VALUES ($1, $2, $3, $4, $5) RETURNING ${columns}`,
          [
            invite.codeHash,
            invite.note,
            invite.maxUses,
            new Date(invite.createdAt),
            new Date(invite.expiresAt),
          ],
        ),
      );
    },
    async list(q, includeInactive, now) {
      const rows = await many<InviteRow>(
        q,
        `SELECT ${columns} FROM invites
          WHERE $1 OR (revoked_at IS NULL AND uses < max_uses AND expires_at > $2)
          ORDER BY created_at DESC, id`,
        [includeInactive, new Date(now)],
      );
      return rows.map(toInvite);
    },
    async revoke(q, inviteId, now) {
      const row = await maybeOne<InviteRow>(
        q,
        `UPDATE invites SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING ${columns}`,
        [inviteId, new Date(now)],
      );
      return row && toInvite(row);
    },
    async live(q, codeHash, now) {
      const row = await maybeOne<{ live: boolean }>(
        q,
        `SELECT true AS live FROM invites
          WHERE code_hash = $1 AND revoked_at IS NULL AND uses < max_uses AND expires_at > $2`,
        [codeHash, new Date(now)],
      );
      return row !== undefined;
    },
    async consume(q, codeHash, now) {
      // One statement: concurrent registrations cannot use the last use twice.
      const result = await q.query(
        `UPDATE invites SET uses = uses + 1
          WHERE code_hash = $1 AND revoked_at IS NULL AND uses < max_uses AND expires_at > $2`,
        [codeHash, new Date(now)],
      );
      return result.rowCount === 1;
    },
  };
}
