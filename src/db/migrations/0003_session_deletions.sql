-- Every deletion of sessions (logout, expiry sweeps, a deleted user, an
-- operator's DELETE) is announced on one channel, so each replica's cache of
-- validated sessions forgets them at once. One notification per statement:
-- the deleted token hashes (hex, comma-separated), or '*' (forget them all)
-- when more than 100 went at once.
CREATE FUNCTION cadenza_announce_session_deletions() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  n int;
  hashes text;
BEGIN
  SELECT count(*), string_agg(encode(token_hash, 'hex'), ',')
    INTO n, hashes
    FROM (SELECT token_hash FROM gone LIMIT 101) AS g;
  IF n > 100 THEN
    PERFORM pg_notify('cadenza_sessions_deleted', '*');
  ELSIF n > 0 THEN
    PERFORM pg_notify('cadenza_sessions_deleted', hashes);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER sessions_deleted
  AFTER DELETE ON sessions
  REFERENCING OLD TABLE AS gone
  FOR EACH STATEMENT
  EXECUTE FUNCTION cadenza_announce_session_deletions();
