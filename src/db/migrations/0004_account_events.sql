-- Sessions get an opaque ID that can be shown and named (the account service
-- lists them, account events name the ones revoked); the token hash stays
-- the key and is never shown.
ALTER TABLE sessions ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE sessions ADD CONSTRAINT sessions_id_unique UNIQUE (id);

-- The account event outbox: written in the same transaction as the change it
-- describes, so an event exists exactly when its change committed. Writers
-- take a transaction-scoped advisory lock before inserting, so cursors are
-- handed out in commit order and a reader that has seen cursor N has seen
-- every event before it.
CREATE TABLE account_events (
  cursor          int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id         int8 NOT NULL,
  kind            text NOT NULL CHECK (kind IN (
                    'registered', 'federated_user_created', 'username_changed',
                    'disabled', 'enabled', 'deleted', 'sessions_revoked')),
  data            jsonb NOT NULL DEFAULT '{}',
  occurred_at     timestamptz NOT NULL
);
CREATE INDEX account_events_occurred_at ON account_events (occurred_at);

-- The newest cursor deleted by retention: a consumer asking for events after
-- an older one has missed some and must resync.
CREATE TABLE account_event_horizon (
  singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  cursor          int8 NOT NULL
);
INSERT INTO account_event_horizon (cursor) VALUES (0);

-- Every change of a user that cached sessions carry (the name) is announced,
-- so each replica's session cache forgets that user's sessions at once.
CREATE FUNCTION cadenza_announce_user_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('cadenza_users_changed', OLD.id::text);
  RETURN NULL;
END
$$;

CREATE TRIGGER users_changed
  AFTER UPDATE ON users
  FOR EACH ROW
  WHEN (OLD.username IS DISTINCT FROM NEW.username)
  EXECUTE FUNCTION cadenza_announce_user_change();
