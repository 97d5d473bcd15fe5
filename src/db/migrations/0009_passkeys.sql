-- Passkeys (WebAuthn credentials), a way to sign in without the password,
-- offered only to clients that announce support (the reference web client).
-- The public key is COSE, as the authenticator sent it at registration; it is
-- public, so it is stored in clear. `sign_count` is the authenticator's
-- signature counter: an assertion whose counter does not move past it (when
-- either is not zero) comes from a cloned authenticator and is refused.
CREATE TABLE passkeys (
  credential_id   bytea PRIMARY KEY CHECK (octet_length(credential_id) BETWEEN 1 AND 1023),
  user_id         int8 NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  public_key      bytea NOT NULL,
  sign_count      int8 NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
  -- The transports the browser reported, comma-separated (`internal,hybrid`).
  transports      text NOT NULL DEFAULT '',
  device_type     text NOT NULL CHECK (device_type IN ('singleDevice', 'multiDevice')),
  backed_up       boolean NOT NULL,
  aaguid          text NOT NULL,
  name            text NOT NULL,
  created_at      timestamptz NOT NULL,
  last_used_at    timestamptz
);
CREATE INDEX passkeys_user_id ON passkeys (user_id);

-- The challenge of a WebAuthn ceremony in progress, used once: deleted by
-- the answer that uses it, whether it verifies or not. A sign-in's is bound
-- to its auth flow (`subject` is the hex of the flow's key, the SHA-256 of
-- the auth_id) and expires with it; a registration's to the session that
-- began it (`subject` is the session's ID), for a few minutes.
CREATE TABLE passkey_challenges (
  purpose         text NOT NULL CHECK (purpose IN ('sign-in', 'registration')),
  subject         text NOT NULL,
  challenge       text NOT NULL,
  user_id         int8 REFERENCES users (id) ON DELETE CASCADE,
  expires_at      timestamptz NOT NULL,
  PRIMARY KEY (purpose, subject)
);
CREATE INDEX passkey_challenges_expires_at ON passkey_challenges (expires_at);

ALTER TABLE account_events DROP CONSTRAINT account_events_kind_check;
ALTER TABLE account_events ADD CONSTRAINT account_events_kind_check CHECK (kind IN (
  'registered', 'federated_user_created', 'username_changed',
  'disabled', 'enabled', 'deleted', 'sessions_revoked', 'second_factor_changed',
  'passkeys_changed'));
