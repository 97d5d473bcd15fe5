-- How many times the account's password was set (a reset, a change, an
-- operator's): a login or password change that passed the password and waits
-- for its second-factor code remembers the number it saw, and is refused if
-- the password was set again meanwhile, so a reset shuts out whoever knew the
-- old password even half-way through a flow.
ALTER TABLE users ADD COLUMN credential_epoch integer NOT NULL DEFAULT 0;
