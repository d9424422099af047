-- Kalshi's own candlesticks (GET /series/{s}/markets/{t}/candlesticks and /historical/markets/{t}/candlesticks),
-- as `collect backfill` fetches them and `import` reads them: per market and period, the YES bid and ask OHLC,
-- the traded price's OHLC, mean and previous, the volume and the open interest. For any time the collector did not
-- record the order book live, these are the only history of the bid and ask.
--
-- Units as everywhere (micro-dollars, centi-contracts). The price columns are NULL for a period without trades, as
-- Kalshi gives them; bid and ask are always present (0 when the book side was empty).
--
-- end_ts is Kalshi's `end_period_ts`, which it calls the inclusive end of the period: the candle of period_minutes
-- P covers (end_ts - P minutes, end_ts]. It is the partition key (the day of the period's end) and the replay
-- order (end_ts, ticker).
--
-- Kalshi revises a candle while its period is open (and the backfill fetches the last one again on every run), so
-- a key (period_minutes, end_ts, ticker) may be stored several times: each fetch whose values differ from the
-- stored ones adds a version with its own ingest_seq, and a fetch that changes nothing adds nothing. Readers take
-- the newest version at or below their watermark, so the newest fetch wins for the latest data while a replay
-- pinned to an earlier watermark still sees exactly what it saw then (an UPDATE in place would change it).
CREATE TABLE kalshi_candles (
    end_ts                  timestamptz NOT NULL,
    ticker                  text COLLATE "C" NOT NULL,
    period_minutes          smallint NOT NULL CHECK (period_minutes IN (1, 60, 1440)),
    yes_bid_open_micros     bigint NOT NULL CHECK (yes_bid_open_micros BETWEEN 0 AND 1000000),
    yes_bid_low_micros      bigint NOT NULL CHECK (yes_bid_low_micros BETWEEN 0 AND 1000000),
    yes_bid_high_micros     bigint NOT NULL CHECK (yes_bid_high_micros BETWEEN 0 AND 1000000),
    yes_bid_close_micros    bigint NOT NULL CHECK (yes_bid_close_micros BETWEEN 0 AND 1000000),
    yes_ask_open_micros     bigint NOT NULL CHECK (yes_ask_open_micros BETWEEN 0 AND 1000000),
    yes_ask_low_micros      bigint NOT NULL CHECK (yes_ask_low_micros BETWEEN 0 AND 1000000),
    yes_ask_high_micros     bigint NOT NULL CHECK (yes_ask_high_micros BETWEEN 0 AND 1000000),
    yes_ask_close_micros    bigint NOT NULL CHECK (yes_ask_close_micros BETWEEN 0 AND 1000000),
    -- NULL: no trade in the period (previous: none before it)
    price_open_micros       bigint CHECK (price_open_micros BETWEEN 0 AND 1000000),
    price_low_micros        bigint CHECK (price_low_micros BETWEEN 0 AND 1000000),
    price_high_micros       bigint CHECK (price_high_micros BETWEEN 0 AND 1000000),
    price_close_micros      bigint CHECK (price_close_micros BETWEEN 0 AND 1000000),
    price_mean_micros       bigint CHECK (price_mean_micros BETWEEN 0 AND 1000000),
    price_previous_micros   bigint CHECK (price_previous_micros BETWEEN 0 AND 1000000),
    volume_centi            bigint NOT NULL CHECK (volume_centi >= 0),
    open_interest_centi     bigint NOT NULL CHECK (open_interest_centi >= 0),
    ingest_seq              bigint NOT NULL DEFAULT nextval('ingest_seq'),
    -- one period's candles in replay order, the versions of a key oldest first
    CONSTRAINT kalshi_candles_pkey PRIMARY KEY (period_minutes, end_ts, ticker, ingest_seq)
) PARTITION BY RANGE (end_ts);
-- per-market reads, and the writer's look-up of a key's newest version
CREATE INDEX kalshi_candles_ticker ON kalshi_candles (ticker, period_minutes, end_ts, ingest_seq);

-- one partition per UTC day, like the other fact tables (ensure_daily_partitions of 0007 creates them)
INSERT INTO partitioned_tables VALUES ('kalshi_candles');

-- data versions (0003): writers serialized, the watermark advanced in the write's own transaction
CREATE TRIGGER kalshi_candles_write_lock BEFORE INSERT OR UPDATE OR DELETE ON kalshi_candles
    FOR EACH STATEMENT EXECUTE FUNCTION fact_write_lock();
CREATE TRIGGER kalshi_candles_data_version AFTER INSERT ON kalshi_candles REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION data_version_advance();
