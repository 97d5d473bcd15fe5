-- This homeserver's Ed25519 keys. The newest row is the current key; older
-- rows are kept so a rotation can be audited. `private_key` is the 32-byte
-- seed, or, when `encrypted`, nonce || AES-256-GCM ciphertext || tag under
-- KEY_ENCRYPTION_KEY with the public key as additional data.
CREATE TABLE server_keys (
  id              int4 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  public_key      bytea NOT NULL CHECK (octet_length(public_key) = 32),
  private_key     bytea NOT NULL,
  encrypted       boolean NOT NULL,
  created_at      timestamptz NOT NULL
);

-- Other homeservers' public keys, as last fetched from their Key RPC.
CREATE TABLE remote_server_keys (
  server_id       text PRIMARY KEY,
  public_key      bytea NOT NULL CHECK (octet_length(public_key) = 32),
  fetched_at      timestamptz NOT NULL
);

-- Federation tokens already used, by SHA-256 of issuer and token data, kept
-- until the token could no longer be accepted anyway.
CREATE TABLE used_federation_tokens (
  token_hash      bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
  expires_at      timestamptz NOT NULL
);
CREATE INDEX used_federation_tokens_expires_at ON used_federation_tokens (expires_at);

-- Users of other homeservers who logged in here. They have no email and no
-- password; (homeserver, foreign_user_id) is who they are. The foreign ID is a
-- uint64 stored in int8 as its two's-complement bit pattern.
ALTER TABLE users
  ALTER COLUMN username_key DROP NOT NULL,
  ADD COLUMN homeserver text,
  ADD COLUMN foreign_user_id int8,
  ADD COLUMN avatar text,
  ADD CONSTRAINT users_foreign_unique UNIQUE (homeserver, foreign_user_id),
  ADD CONSTRAINT users_kind CHECK (
    (homeserver IS NULL AND foreign_user_id IS NULL AND username_key IS NOT NULL)
    OR (homeserver IS NOT NULL AND foreign_user_id IS NOT NULL
        AND email IS NULL AND username_key IS NULL AND password_hash IS NULL)
  );
