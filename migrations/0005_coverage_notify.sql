-- Coverage writes notify the servers' caches of coverage (src/cache.rs), as 0004 does for reference writes.
--
-- Every statement that changes coverage_daily (the fact tables' triggers of 0002 on each write of trades,
-- order-book deltas and snapshots; a repair by hand) sends one notification on the channel
-- kalshi_replay_coverage, delivered at commit and folded to one per transaction. A channel of its own, so that a
-- stream of fact writes leaves the cached series, events, markets and settlements alone.

CREATE FUNCTION coverage_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kalshi_replay_coverage', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER coverage_daily_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON coverage_daily
    FOR EACH STATEMENT EXECUTE FUNCTION coverage_changed();
