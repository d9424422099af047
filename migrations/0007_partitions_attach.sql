-- Daily partitions created without locking readers out.
--
-- 0001's ensure_daily_partitions used CREATE TABLE ... PARTITION OF, which locks the parent ACCESS EXCLUSIVE. An
-- import of a past day then waits behind every running replay (a replay's snapshot holds ACCESS SHARE on the
-- parent until it ends), and every later query of the table queues behind the waiting creator. This version
-- creates the day's table on its own (LIKE the parent: columns, collations, defaults, CHECKs) and ATTACHes it,
-- which locks the parent only SHARE UPDATE EXCLUSIVE: readers and writers go on, and the attach of an empty table
-- is instant. ATTACH creates the partition's indexes from the parent's and fires nothing. Same names, same bounds,
-- same return value, still idempotent and serialized by the advisory lock.

CREATE OR REPLACE FUNCTION ensure_daily_partitions(p_from timestamptz, p_to timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day_start timestamptz;
    last_day  timestamptz;
    tbl       text;
    part      text;
    created   integer := 0;
BEGIN
    IF p_from IS NULL OR p_to IS NULL OR p_from >= p_to THEN
        RETURN 0;
    END IF;
    day_start := date_trunc('day', p_from, 'UTC');
    -- the range is half-open, so its last instant is p_to minus one microsecond
    last_day := date_trunc('day', p_to - interval '1 microsecond', 'UTC');
    PERFORM pg_advisory_xact_lock(hashtext('kalshi_replay.ensure_daily_partitions'));
    WHILE day_start <= last_day LOOP
        FOR tbl IN SELECT name FROM partitioned_tables ORDER BY name LOOP
            part := format('%s_p%s', tbl, to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD'));
            IF to_regclass(quote_ident(part)) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, tbl);
                EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               tbl, part, day_start, day_start + interval '24 hours');
                created := created + 1;
            END IF;
        END LOOP;
        -- UTC days are always 24 hours; '1 day' would follow the session time zone's DST
        day_start := day_start + interval '24 hours';
    END LOOP;
    RETURN created;
END
$$;
