-- Data coverage: per market and UTC day, how many trades, order-book deltas and snapshots the service holds, and
-- the first and last trade time. GetCoverage reads these rows instead of counting partitions per request.
--
-- The counts are kept exact at write time by statement-level triggers on the partitioned parents, which aggregate
-- the statement's transition table (only the rows it really inserted or deleted: an INSERT ... ON CONFLICT DO
-- NOTHING that skips a duplicate does not count it) into one upsert per (ticker, day). Caveats:
-- * write through the parents: statement triggers of a parent do not fire for a write addressed to a partition;
-- * TRUNCATE, DROP and DETACH of a partition bypass the triggers; whoever does that must fix coverage_daily;
-- * every writer of a (ticker, day) takes that row's lock until it commits, so writers of the same market-day
--   serialize (their fact inserts do not) and, at REPEATABLE READ or above, the later one fails with a
--   serialization error. Each statement locks its rows in (ticker, day) order, which leaves deadlocks only to
--   transactions that write the same market-days in several statements in different orders.

-- Lock out writers (partitions included) until the migration commits, so that no row lands between the backfill's
-- snapshot and the triggers.
LOCK TABLE trades, orderbook_deltas, orderbook_snapshots IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE coverage_daily (
    ticker          text COLLATE "C" NOT NULL,
    -- the UTC day: (ts AT TIME ZONE 'UTC')::date
    day             date NOT NULL,
    -- a negative count would mean that coverage_daily lies: fail the write rather than let it
    trade_count     bigint NOT NULL DEFAULT 0 CHECK (trade_count >= 0),
    delta_count     bigint NOT NULL DEFAULT 0 CHECK (delta_count >= 0),
    snapshot_count  bigint NOT NULL DEFAULT 0 CHECK (snapshot_count >= 0),
    -- NULL when the day holds no trade
    first_trade_ts  timestamptz,
    last_trade_ts   timestamptz,
    CONSTRAINT coverage_daily_pkey PRIMARY KEY (ticker, day)
);

-- The one trigger function of all three fact tables and of INSERT, UPDATE and DELETE (a transition table is only
-- visible to the trigger's own function, so the statements cannot be shared as functions). An UPDATE counts as the
-- deletion of its old rows and the insertion of its new ones.
CREATE FUNCTION coverage_daily_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- (nested: an expression naming old_rows cannot even be planned in an INSERT trigger)
    IF TG_OP = 'UPDATE' THEN
        IF NOT EXISTS (SELECT ticker, ts FROM old_rows EXCEPT ALL SELECT ticker, ts FROM new_rows) THEN
            -- no row moved to another market or time (e.g. ON CONFLICT DO UPDATE): nothing to lock or count
            RETURN NULL;
        END IF;
    END IF;

    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Lock the rows first, in (ticker, day) order like the inserts do, so that deleters and inserters cannot
        -- deadlock each other. The recount of first/last below, a later statement, then runs on a snapshot taken
        -- after every writer that got to these rows before us has committed; writers after us merge their own
        -- first/last into it.
        PERFORM 1
          FROM coverage_daily c
         WHERE (c.ticker, c.day) IN (SELECT ticker, (ts AT TIME ZONE 'UTC')::date FROM old_rows)
         ORDER BY c.ticker, c.day
           FOR UPDATE;

        UPDATE coverage_daily c
           SET trade_count = c.trade_count - CASE WHEN TG_TABLE_NAME = 'trades' THEN gone.n ELSE 0 END,
               delta_count = c.delta_count - CASE WHEN TG_TABLE_NAME = 'orderbook_deltas' THEN gone.n ELSE 0 END,
               snapshot_count = c.snapshot_count
                                - CASE WHEN TG_TABLE_NAME = 'orderbook_snapshots' THEN gone.n ELSE 0 END
          FROM (SELECT ticker, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n
                  FROM old_rows
                 GROUP BY 1, 2) AS gone
         WHERE c.ticker = gone.ticker AND c.day = gone.day;

        IF TG_TABLE_NAME = 'trades' THEN
            -- the first or last trade may be gone: recount them from the (ticker, ts) index
            UPDATE coverage_daily c
               SET (first_trade_ts, last_trade_ts) = (
                       SELECT min(t.ts), max(t.ts)
                         FROM trades t
                        WHERE t.ticker = c.ticker
                          AND t.ts >= c.day::timestamp AT TIME ZONE 'UTC'
                          AND t.ts < (c.day + 1)::timestamp AT TIME ZONE 'UTC')
             WHERE (c.ticker, c.day) IN (SELECT ticker, (ts AT TIME ZONE 'UTC')::date FROM old_rows);
        END IF;

        -- a day without any data has no row, so that GetCoverage lists only days with data
        DELETE FROM coverage_daily c
         WHERE (c.ticker, c.day) IN (SELECT ticker, (ts AT TIME ZONE 'UTC')::date FROM old_rows)
           AND c.trade_count = 0 AND c.delta_count = 0 AND c.snapshot_count = 0;
    END IF;

    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- ORDER BY: concurrent statements lock their rows in the same order and cannot deadlock each other
        INSERT INTO coverage_daily AS c
               (ticker, day, trade_count, delta_count, snapshot_count, first_trade_ts, last_trade_ts)
        SELECT added.ticker,
               added.day,
               CASE WHEN TG_TABLE_NAME = 'trades' THEN added.n ELSE 0 END,
               CASE WHEN TG_TABLE_NAME = 'orderbook_deltas' THEN added.n ELSE 0 END,
               CASE WHEN TG_TABLE_NAME = 'orderbook_snapshots' THEN added.n ELSE 0 END,
               CASE WHEN TG_TABLE_NAME = 'trades' THEN added.first_ts END,
               CASE WHEN TG_TABLE_NAME = 'trades' THEN added.last_ts END
          FROM (SELECT ticker, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n,
                       min(ts) AS first_ts, max(ts) AS last_ts
                  FROM new_rows
                 GROUP BY 1, 2) AS added
         ORDER BY added.ticker, added.day
            ON CONFLICT (ticker, day) DO UPDATE
           SET trade_count = c.trade_count + excluded.trade_count,
               delta_count = c.delta_count + excluded.delta_count,
               snapshot_count = c.snapshot_count + excluded.snapshot_count,
               -- LEAST and GREATEST ignore NULLs: a day first seen through its order book gets its trades later
               first_trade_ts = LEAST(c.first_trade_ts, excluded.first_trade_ts),
               last_trade_ts = GREATEST(c.last_trade_ts, excluded.last_trade_ts);
    END IF;
    RETURN NULL;
END
$$;

-- A trigger with a transition table serves one event, hence three per table.
CREATE TRIGGER trades_coverage_insert AFTER INSERT ON trades
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();
CREATE TRIGGER trades_coverage_update AFTER UPDATE ON trades
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();
CREATE TRIGGER trades_coverage_delete AFTER DELETE ON trades
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();

CREATE TRIGGER orderbook_deltas_coverage_insert AFTER INSERT ON orderbook_deltas
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();
CREATE TRIGGER orderbook_deltas_coverage_update AFTER UPDATE ON orderbook_deltas
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();
CREATE TRIGGER orderbook_deltas_coverage_delete AFTER DELETE ON orderbook_deltas
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();

CREATE TRIGGER orderbook_snapshots_coverage_insert AFTER INSERT ON orderbook_snapshots
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();
CREATE TRIGGER orderbook_snapshots_coverage_update AFTER UPDATE ON orderbook_snapshots
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();
CREATE TRIGGER orderbook_snapshots_coverage_delete AFTER DELETE ON orderbook_snapshots
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION coverage_daily_apply();

-- Backfill what a database migrated with data already holds.
INSERT INTO coverage_daily (ticker, day, trade_count, delta_count, snapshot_count, first_trade_ts, last_trade_ts)
SELECT ticker, day, sum(trades), sum(deltas), sum(snapshots), min(first_ts), max(last_ts)
  FROM (SELECT ticker, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS trades, 0 AS deltas, 0 AS snapshots,
               min(ts) AS first_ts, max(ts) AS last_ts
          FROM trades GROUP BY 1, 2
        UNION ALL
        SELECT ticker, (ts AT TIME ZONE 'UTC')::date, 0, count(*), 0, NULL, NULL
          FROM orderbook_deltas GROUP BY 1, 2
        UNION ALL
        SELECT ticker, (ts AT TIME ZONE 'UTC')::date, 0, 0, count(*), NULL, NULL
          FROM orderbook_snapshots GROUP BY 1, 2) AS per_table
 GROUP BY ticker, day;
