-- Accounts. Emails and usernames are unique by their normalised keys, which
-- cadenza computes itself so that uniqueness does not depend on the
-- database's collation (PGlite and Postgres may differ).
CREATE TABLE users (
  id              int8 PRIMARY KEY CHECK (id > 0),
  email           text,
  email_key       text,
  username        text NOT NULL,
  username_key    text NOT NULL,
  -- argon2id PHC string; NULL for accounts that cannot log in with a password.
  password_hash   text,
  created_at      timestamptz NOT NULL,
  CONSTRAINT users_email_unique UNIQUE (email_key),
  CONSTRAINT users_username_unique UNIQUE (username_key)
);

-- Sessions, keyed by the SHA-256 of the token: the token itself is never stored.
CREATE TABLE sessions (
  token_hash      bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
  user_id         int8 NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  created_at      timestamptz NOT NULL,
  last_seen_at    timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);

-- Auth flows, keyed by the SHA-256 of the auth_id.
CREATE TABLE auth_flows (
  key             bytea PRIMARY KEY CHECK (octet_length(key) = 32),
  state           jsonb NOT NULL,
  version         int4 NOT NULL DEFAULT 0,
  step_count      int4 NOT NULL DEFAULT 0,
  done            boolean NOT NULL DEFAULT false,
  created_at      timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL
);
CREATE INDEX auth_flows_expires_at ON auth_flows (expires_at);

-- Every step a flow produced, for StreamSteps to replay to late subscribers.
-- The payload is sealed with a key derived from the auth_id (AES-256-GCM), so
-- the session token in a final step cannot be read from the database.
CREATE TABLE auth_flow_steps (
  flow_key        bytea NOT NULL REFERENCES auth_flows (key) ON DELETE CASCADE,
  seq             int4 NOT NULL,
  sealed          bytea NOT NULL,
  PRIMARY KEY (flow_key, seq)
);
