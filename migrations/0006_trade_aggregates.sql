-- Trade aggregates per market and UTC minute (trade_minutes) and per market and UTC day (trade_days), kept
-- exact at write time so that StreamCandles reads one row per market-minute or market-day instead of every trade
-- (the idea of TimescaleDB's continuous aggregates, kept in the writer's transaction instead of refreshed later).
--
-- A row holds what candles need of the trades of its bucket: the first and last trade in the replay order
-- (ts, trade_id) with their keys, so that a later or earlier trade merges in the right place; high, low, volume,
-- trade count and notional (Σ yes_price_micros × count_centi, numeric: exact whatever the counts); and the highest
-- ingest_seq of its trades, so that a replay pinned below it knows the row holds trades it must not see and reads
-- that bucket's trades instead.
--
-- Kept by statement-level triggers on trades, like coverage_daily (0002), with the same caveats: write through the
-- parent; TRUNCATE, DROP or DETACH of a partition bypass them. Inserted trades merge into their buckets (an INSERT
-- ... ON CONFLICT DO NOTHING that skips a duplicate does not count it); deleted or updated trades have their
-- buckets recomputed from the trades that remain. Fact writers hold one advisory lock (0003), so two writers never
-- merge into the same row at once.

-- Lock out writers until the migration commits, so that no trade lands between the backfill and the triggers.
LOCK TABLE trades IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE trade_minutes (
    -- the bucket's start: a UTC minute (trade_minutes) or a UTC midnight (trade_days)
    bucket              timestamptz NOT NULL,
    ticker              text COLLATE "C" NOT NULL,
    open_ts             timestamptz NOT NULL,
    open_trade_id       text COLLATE "C" NOT NULL,
    open_micros         bigint NOT NULL,
    close_ts            timestamptz NOT NULL,
    close_trade_id      text COLLATE "C" NOT NULL,
    close_micros        bigint NOT NULL,
    high_micros         bigint NOT NULL,
    low_micros          bigint NOT NULL,
    volume_centi        bigint NOT NULL,
    trade_count         bigint NOT NULL CHECK (trade_count > 0),
    notional            numeric NOT NULL,
    max_ingest_seq      bigint NOT NULL,
    -- the order of a replay
    CONSTRAINT trade_minutes_pkey PRIMARY KEY (bucket, ticker)
);

-- trade_days has an index by market too (a one-market request reads its days through it). trade_minutes has not:
-- it would double the cost of keeping the minutes (measured), and a one-market request reads its trades through
-- trades' own index instead.
CREATE TABLE trade_days (LIKE trade_minutes INCLUDING ALL);
CREATE INDEX trade_days_ticker ON trade_days (ticker, bucket);

-- The aggregates of `source` (a relation or parenthesized query with the columns of the tables above, one row per
-- aggregate or per trade) by (bucket of `width`, ticker), as a SELECT with the tables' columns in their order,
-- sorted by (bucket, ticker). Its output has the shape of its input, so that trades (as one-trade aggregates) fold
-- into minutes and minutes into days with the same text. One sort: the rows of a bucket in (open_ts,
-- open_trade_id) order, the first gives the open and the last the close (the rows of a source never overlap in
-- time: trades, or the minutes of a day), and the window's whole-bucket frame the rest.
-- Buckets are aligned to UTC midnight: 0001-01-01 is one, and lies before every trade (date_bin with an origin
-- after the time was wrong in some PostgreSQL releases).
CREATE FUNCTION trade_aggregates_select(source text, width interval) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($sql$
SELECT DISTINCT ON (bucket, ticker)
       bucket, ticker, open_ts, open_trade_id, open_micros,
       last_value(close_ts) OVER bucket AS close_ts,
       last_value(close_trade_id) OVER bucket AS close_trade_id,
       last_value(close_micros) OVER bucket AS close_micros,
       max(high_micros) OVER bucket AS high_micros,
       min(low_micros) OVER bucket AS low_micros,
       (sum(volume_centi) OVER bucket)::bigint AS volume_centi,
       (sum(trade_count) OVER bucket)::bigint AS trade_count,
       sum(notional) OVER bucket AS notional,
       max(max_ingest_seq) OVER bucket AS max_ingest_seq
  FROM (SELECT date_bin(%2$L, open_ts, TIMESTAMPTZ '0001-01-01 00:00:00+00') AS bucket, ticker,
               open_ts, open_trade_id, open_micros, close_ts, close_trade_id, close_micros,
               high_micros, low_micros, volume_centi, trade_count, notional, max_ingest_seq
          FROM %1$s AS source) AS s
WINDOW bucket AS (PARTITION BY bucket, ticker ORDER BY open_ts, open_trade_id
                  ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
ORDER BY bucket, ticker, open_ts, open_trade_id
$sql$, source, width)
$fn$;

-- Trades (a relation or parenthesized query with the columns of trades) as one-trade aggregates.
CREATE FUNCTION trade_aggregates_of_trades(trades text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($sql$(
    SELECT ticker, ts AS open_ts, trade_id AS open_trade_id, yes_price_micros AS open_micros,
           ts AS close_ts, trade_id AS close_trade_id, yes_price_micros AS close_micros,
           yes_price_micros AS high_micros, yes_price_micros AS low_micros, count_centi AS volume_centi,
           1::bigint AS trade_count, yes_price_micros::numeric * count_centi AS notional,
           ingest_seq AS max_ingest_seq
      FROM %s AS t)$sql$, trades)
$fn$;

-- Merges aggregates into the rows of `target` with the same (bucket, ticker): the earlier open, the later close.
CREATE FUNCTION trade_aggregates_merge(target text, aggregates text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($sql$
INSERT INTO %1$I AS a SELECT * FROM (%2$s) AS aggregates ORDER BY bucket, ticker
ON CONFLICT (bucket, ticker) DO UPDATE SET
    open_ts = CASE WHEN (excluded.open_ts, excluded.open_trade_id) < (a.open_ts, a.open_trade_id)
                   THEN excluded.open_ts ELSE a.open_ts END,
    open_trade_id = CASE WHEN (excluded.open_ts, excluded.open_trade_id) < (a.open_ts, a.open_trade_id)
                         THEN excluded.open_trade_id ELSE a.open_trade_id END,
    open_micros = CASE WHEN (excluded.open_ts, excluded.open_trade_id) < (a.open_ts, a.open_trade_id)
                       THEN excluded.open_micros ELSE a.open_micros END,
    close_ts = CASE WHEN (excluded.close_ts, excluded.close_trade_id) > (a.close_ts, a.close_trade_id)
                    THEN excluded.close_ts ELSE a.close_ts END,
    close_trade_id = CASE WHEN (excluded.close_ts, excluded.close_trade_id) > (a.close_ts, a.close_trade_id)
                          THEN excluded.close_trade_id ELSE a.close_trade_id END,
    close_micros = CASE WHEN (excluded.close_ts, excluded.close_trade_id) > (a.close_ts, a.close_trade_id)
                        THEN excluded.close_micros ELSE a.close_micros END,
    high_micros = GREATEST(a.high_micros, excluded.high_micros),
    low_micros = LEAST(a.low_micros, excluded.low_micros),
    volume_centi = a.volume_centi + excluded.volume_centi,
    trade_count = a.trade_count + excluded.trade_count,
    notional = a.notional + excluded.notional,
    max_ingest_seq = GREATEST(a.max_ingest_seq, excluded.max_ingest_seq)
$sql$, target, aggregates)
$fn$;

-- The buckets of `width` that the trades of `changed` (a query with columns ticker and ts) fall into.
CREATE FUNCTION trade_aggregates_keys(width interval, changed text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($sql$(
    SELECT DISTINCT ticker, date_bin(%L, ts, TIMESTAMPTZ '0001-01-01 00:00:00+00') AS bucket
      FROM (%s) AS changed)$sql$, width, changed)
$fn$;

-- Two statements that recompute the rows of `target` (buckets of `width`) that the trades of `changed` fall
-- into, from the trades that are there now: the old rows go, then the recount of each bucket that still has trades
-- comes in.
CREATE FUNCTION trade_aggregates_forget(target text, width interval, changed text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format('DELETE FROM %I AS a USING %s AS keys WHERE a.bucket = keys.bucket AND a.ticker = keys.ticker',
              target, trade_aggregates_keys(width, changed))
$fn$;

CREATE FUNCTION trade_aggregates_recount(target text, width interval, changed text) RETURNS text
LANGUAGE sql IMMUTABLE AS $fn$
SELECT format('WITH keys AS MATERIALIZED %s INSERT INTO %I %s',
    trade_aggregates_keys(width, changed),
    target,
    trade_aggregates_select(trade_aggregates_of_trades(format(
        '(SELECT t.* FROM keys JOIN trades t ON t.ticker = keys.ticker AND t.ts >= keys.bucket AND t.ts < keys.bucket + %L)',
        width)), width))
$fn$;

CREATE FUNCTION trade_aggregates_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    level record;
    changed text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- one statement: the minutes of the new trades merge into trade_minutes, and the days of those minutes
        -- into trade_days
        EXECUTE format('WITH minutes AS MATERIALIZED (%s), merged AS (%s) %s',
            trade_aggregates_select(trade_aggregates_of_trades('new_rows'), INTERVAL '1 minute'),
            trade_aggregates_merge('trade_minutes', 'SELECT * FROM minutes'),
            trade_aggregates_merge('trade_days', trade_aggregates_select('minutes', INTERVAL '1 day')));
        RETURN NULL;
    END IF;
    -- DELETE: the buckets of the deleted trades; UPDATE: the old buckets of the rows and their new ones
    changed := CASE TG_OP WHEN 'DELETE' THEN 'SELECT ticker, ts FROM old_rows'
               ELSE 'SELECT ticker, ts FROM old_rows UNION ALL SELECT ticker, ts FROM new_rows' END;
    FOR level IN SELECT * FROM (VALUES ('trade_minutes', INTERVAL '1 minute'), ('trade_days', INTERVAL '1 day'))
                               AS l (target, width) LOOP
        EXECUTE trade_aggregates_forget(level.target, level.width, changed);
        EXECUTE trade_aggregates_recount(level.target, level.width, changed);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER trades_aggregates_insert AFTER INSERT ON trades
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION trade_aggregates_apply();
CREATE TRIGGER trades_aggregates_update AFTER UPDATE ON trades
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION trade_aggregates_apply();
CREATE TRIGGER trades_aggregates_delete AFTER DELETE ON trades
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION trade_aggregates_apply();

-- Backfill what a database migrated with trades already holds: the minutes from the trades, the days from the
-- minutes.
DO $$
BEGIN
    EXECUTE format('INSERT INTO trade_minutes %s',
                   trade_aggregates_select(trade_aggregates_of_trades('trades'), INTERVAL '1 minute'));
    EXECUTE format('INSERT INTO trade_days %s', trade_aggregates_select('trade_minutes', INTERVAL '1 day'));
END
$$;
