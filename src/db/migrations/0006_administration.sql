-- A disabled user cannot log in, Federate, or pass Introspect/CheckLoggedIn.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

-- Disabling, enabling and renaming are announced, so each replica's session
-- cache forgets that user's sessions at once.
DROP TRIGGER users_changed ON users;
CREATE TRIGGER users_changed
  AFTER UPDATE ON users
  FOR EACH ROW
  WHEN (OLD.username IS DISTINCT FROM NEW.username
        OR OLD.disabled_at IS DISTINCT FROM NEW.disabled_at)
  EXECUTE FUNCTION cadenza_announce_user_change();

-- Invites for REGISTRATION=invite. The code is random and long, so its
-- SHA-256 is all that is kept.
CREATE TABLE invites (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  code_hash       bytea NOT NULL CHECK (octet_length(code_hash) = 32),
  note            text NOT NULL DEFAULT '',
  max_uses        int4 NOT NULL CHECK (max_uses > 0),
  uses            int4 NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
  created_at      timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL,
  revoked_at      timestamptz,
  CONSTRAINT invites_code_unique UNIQUE (code_hash)
);
