-- A user's TOTP second factor (RFC 6238). `secret` is sealed (nonce ||
-- AES-256-GCM || tag) under a key derived from the server secret
-- `second-factor`, which is itself encrypted under KEY_ENCRYPTION_KEY when
-- that is set, as the signing key is. `enabled_at` is NULL while an
-- enrolment awaits its first code. `last_step` is the newest time step whose
-- code was accepted: a code is accepted only for a later step, so no code
-- works twice, on any replica.
CREATE TABLE totp_factors (
  user_id         int8 PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  secret          bytea NOT NULL,
  created_at      timestamptz NOT NULL,
  enabled_at      timestamptz,
  last_step       int8 NOT NULL DEFAULT 0
);

-- Single-use recovery codes: only their HMAC under a key derived from the
-- same server secret; a row is deleted when its code is used.
CREATE TABLE recovery_codes (
  user_id         int8 NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  code_hmac       bytea NOT NULL CHECK (octet_length(code_hmac) = 32),
  PRIMARY KEY (user_id, code_hmac)
);

ALTER TABLE account_events DROP CONSTRAINT account_events_kind_check;
ALTER TABLE account_events ADD CONSTRAINT account_events_kind_check CHECK (kind IN (
  'registered', 'federated_user_created', 'username_changed',
  'disabled', 'enabled', 'deleted', 'sessions_revoked', 'second_factor_changed'));
