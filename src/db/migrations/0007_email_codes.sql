-- Secrets the server keeps beside its signing key (the HMAC key of email
-- codes), encrypted under KEY_ENCRYPTION_KEY when it is set, like the key.
CREATE TABLE server_secrets (
  name            text PRIMARY KEY,
  secret          bytea NOT NULL,
  encrypted       boolean NOT NULL,
  created_at      timestamptz NOT NULL
);

-- The code a flow emailed (one at a time per flow: asking again replaces it).
-- Only its HMAC is kept; it is spent by its first correct entry or its fifth
-- wrong one. `user_id` is NULL for an address nobody registered (the flow
-- behaves the same, and no email is sent); `payload` holds a registration
-- waiting for its email to be confirmed.
CREATE TABLE email_codes (
  flow_key        bytea PRIMARY KEY REFERENCES auth_flows (key) ON DELETE CASCADE,
  purpose         text NOT NULL CHECK (purpose IN ('verify-email', 'reset-password', 'delete-user')),
  user_id         int8 REFERENCES users (id) ON DELETE CASCADE,
  code_hmac       bytea NOT NULL CHECK (octet_length(code_hmac) = 32),
  attempts_left   int4 NOT NULL,
  spent           boolean NOT NULL DEFAULT false,
  expires_at      timestamptz NOT NULL,
  payload         jsonb
);
