-- Failed logins per account key (SHA-256 of the normalised email, whether or
-- not an account has it, so unknown and known emails throttle alike and no
-- email is stored for an address nobody registered).
CREATE TABLE login_failures (
  key             bytea PRIMARY KEY CHECK (octet_length(key) = 32),
  failures        int4 NOT NULL,
  last_failure_at timestamptz NOT NULL
);
CREATE INDEX login_failures_last_failure_at ON login_failures (last_failure_at);

-- Per-address rate counters, in rate-limiter-flexible's RateLimiterPostgres
-- layout (it is told the table exists). `expire` is epoch milliseconds, as a
-- float8 so that it reads back as a number (cadenza reads int8 as bigint).
CREATE TABLE rate_limits (
  key             varchar(255) PRIMARY KEY,
  points          int4 NOT NULL DEFAULT 0,
  expire          float8
);
CREATE INDEX rate_limits_expire ON rate_limits (expire);

-- The client address a flow was begun from, so live flows per address can be
-- capped (a BeginAuth flood cannot grow this table without bound).
ALTER TABLE auth_flows ADD COLUMN client_address text;
CREATE INDEX auth_flows_live_by_address ON auth_flows (client_address, expires_at) WHERE NOT done;

-- Where and with what a session was created, for the user's list of sessions.
ALTER TABLE sessions ADD COLUMN client_address text, ADD COLUMN user_agent text;
