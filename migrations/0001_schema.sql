-- The base schema: reference tables (series -> events -> markets, settlements) and the fact tables that replays
-- read (trades, order-book deltas and snapshots, market lifecycle events).
--
-- Conventions (see DESIGN.md):
-- * prices in integer micro-dollars (`*_micros`), counts in integer centi-contracts (`*_centi`);
-- * timestamptz everywhere, UTC;
-- * tickers and ids use COLLATE "C" so that replay order is byte order on every server, whatever its locale;
-- * sides and kinds stored as smallint codes equal to the proto enum numbers (1 = yes, 2 = no);
-- * hierarchy linked by ticker columns, no foreign keys (data arrives in any order);
-- * fact tables PARTITION BY RANGE (ts), one partition per UTC day, created by ensure_daily_partitions();
-- * every fact row carries ingest_seq from one global sequence, so a replay can be pinned to a data version.

CREATE SEQUENCE ingest_seq AS bigint;

CREATE TABLE series (
    ticker              text COLLATE "C" PRIMARY KEY,
    title               text NOT NULL DEFAULT '',
    category            text NOT NULL DEFAULT '',
    tags                text[] NOT NULL DEFAULT '{}',
    frequency           text NOT NULL DEFAULT '',
    contract_url        text NOT NULL DEFAULT '',
    fee_type            text NOT NULL DEFAULT '',
    -- last-writer-wins: an upsert only replaces a row whose updated_at is older
    updated_at          timestamptz NOT NULL
);
CREATE INDEX series_category ON series (category, ticker);

CREATE TABLE events (
    event_ticker        text COLLATE "C" PRIMARY KEY,
    series_ticker       text COLLATE "C" NOT NULL,
    title               text NOT NULL DEFAULT '',
    sub_title           text NOT NULL DEFAULT '',
    category            text NOT NULL DEFAULT '',
    mutually_exclusive  boolean NOT NULL DEFAULT false,
    strike_date         timestamptz,
    strike_period       text NOT NULL DEFAULT '',
    updated_at          timestamptz NOT NULL
);
CREATE INDEX events_series ON events (series_ticker, event_ticker);

CREATE TABLE markets (
    ticker                   text COLLATE "C" PRIMARY KEY,
    event_ticker             text COLLATE "C" NOT NULL,
    series_ticker            text COLLATE "C" NOT NULL,
    market_type              smallint NOT NULL DEFAULT 1 CHECK (market_type IN (1, 2)),     -- 1 binary, 2 scalar
    title                    text NOT NULL DEFAULT '',
    yes_sub_title            text NOT NULL DEFAULT '',
    no_sub_title             text NOT NULL DEFAULT '',
    -- 1 initialized, 2 inactive, 3 active, 4 closed, 5 determined, 6 disputed, 7 amended, 8 finalized
    status                   smallint NOT NULL CHECK (status BETWEEN 1 AND 8),
    open_time                timestamptz,
    close_time               timestamptz,
    expected_expiration_time timestamptz,
    latest_expiration_time   timestamptz,
    settlement_timer_seconds integer,
    can_close_early          boolean NOT NULL DEFAULT false,
    strike_type              text NOT NULL DEFAULT '',
    -- strikes are values of the underlying (e.g. a BTC price), not contract prices: kept as exact decimals
    floor_strike             numeric,
    cap_strike               numeric,
    rules_primary            text NOT NULL DEFAULT '',
    rules_secondary          text NOT NULL DEFAULT '',
    updated_at               timestamptz NOT NULL
);
CREATE INDEX markets_event ON markets (event_ticker, ticker);
CREATE INDEX markets_series ON markets (series_ticker, ticker);

-- One row per market, denormalized so that settlements of an event or series need no join.
CREATE TABLE settlements (
    market_ticker            text COLLATE "C" PRIMARY KEY,
    event_ticker             text COLLATE "C" NOT NULL,
    series_ticker            text COLLATE "C" NOT NULL,
    result                   smallint NOT NULL CHECK (result BETWEEN 1 AND 4),  -- 1 yes, 2 no, 3 scalar, 4 void
    -- what one YES contract paid out, in micro-dollars (1_000_000 for yes, 0 for no)
    settlement_value_micros  bigint NOT NULL CHECK (settlement_value_micros BETWEEN 0 AND 1000000),
    determined_time          timestamptz,
    settled_time             timestamptz,
    updated_at               timestamptz NOT NULL
);
CREATE INDEX settlements_event ON settlements (event_ticker, market_ticker);
CREATE INDEX settlements_series ON settlements (series_ticker, market_ticker);
CREATE INDEX settlements_settled ON settlements (settled_time, market_ticker);

-- Executed trades. The primary key is also the replay order, so a whole-range replay reads each day partition in
-- index order without a sort, and re-ingesting the same trade is a no-op.
CREATE TABLE trades (
    ts                  timestamptz NOT NULL,
    ticker              text COLLATE "C" NOT NULL,
    trade_id            text COLLATE "C" NOT NULL,
    -- the NO price is 1_000_000 - yes_price_micros and is not stored
    yes_price_micros    bigint NOT NULL CHECK (yes_price_micros > 0 AND yes_price_micros < 1000000),
    count_centi         bigint NOT NULL CHECK (count_centi > 0),
    taker_side          smallint NOT NULL CHECK (taker_side IN (1, 2)),
    ingest_seq          bigint NOT NULL DEFAULT nextval('ingest_seq'),
    CONSTRAINT trades_pkey PRIMARY KEY (ts, ticker, trade_id)
) PARTITION BY RANGE (ts);
-- per-market replays: (ticker, ts, trade_id) order
CREATE INDEX trades_ticker_ts ON trades (ticker, ts, trade_id);

-- Order-book deltas as Kalshi's WebSocket sends them: one price level of one side changes by delta.
-- sid/seq are kept so that a replay can detect a gap in a subscription's sequence.
CREATE TABLE orderbook_deltas (
    ts                  timestamptz NOT NULL,
    ticker              text COLLATE "C" NOT NULL,
    sid                 bigint NOT NULL,
    seq                 bigint NOT NULL,
    side                smallint NOT NULL CHECK (side IN (1, 2)),
    price_micros        bigint NOT NULL CHECK (price_micros > 0 AND price_micros < 1000000),
    delta_centi         bigint NOT NULL CHECK (delta_centi <> 0),
    ingest_seq          bigint NOT NULL DEFAULT nextval('ingest_seq'),
    CONSTRAINT orderbook_deltas_pkey PRIMARY KEY (ts, ticker, sid, seq)
) PARTITION BY RANGE (ts);
CREATE INDEX orderbook_deltas_ticker_ts ON orderbook_deltas (ticker, ts, sid, seq);

-- Full order-book snapshots: bids only per side (a YES ask is 1 USD minus the best NO bid), as parallel arrays of
-- price levels (ascending price) and resting sizes.
CREATE TABLE orderbook_snapshots (
    ts                  timestamptz NOT NULL,
    ticker              text COLLATE "C" NOT NULL,
    sid                 bigint NOT NULL,
    seq                 bigint NOT NULL,
    yes_price_micros    bigint[] NOT NULL,
    yes_size_centi      bigint[] NOT NULL,
    no_price_micros     bigint[] NOT NULL,
    no_size_centi       bigint[] NOT NULL,
    ingest_seq          bigint NOT NULL DEFAULT nextval('ingest_seq'),
    CONSTRAINT orderbook_snapshots_pkey PRIMARY KEY (ts, ticker, sid, seq),
    CHECK (cardinality(yes_price_micros) = cardinality(yes_size_centi)),
    CHECK (cardinality(no_price_micros) = cardinality(no_size_centi))
) PARTITION BY RANGE (ts);
CREATE INDEX orderbook_snapshots_ticker_ts ON orderbook_snapshots (ticker, ts, sid, seq);

-- Market lifecycle events (Kalshi's market_lifecycle_v2).
-- event_type: 1 created, 2 activated, 3 deactivated, 4 close_date_updated, 5 determined, 6 settled
CREATE TABLE market_lifecycle (
    ts                       timestamptz NOT NULL,
    ticker                   text COLLATE "C" NOT NULL,
    event_type               smallint NOT NULL CHECK (event_type BETWEEN 1 AND 6),
    open_time                timestamptz,
    close_time               timestamptz,
    result                   smallint CHECK (result BETWEEN 1 AND 4),
    settlement_value_micros  bigint CHECK (settlement_value_micros BETWEEN 0 AND 1000000),
    determined_time          timestamptz,
    settled_time             timestamptz,
    ingest_seq               bigint NOT NULL DEFAULT nextval('ingest_seq'),
    CONSTRAINT market_lifecycle_pkey PRIMARY KEY (ts, ticker, event_type)
) PARTITION BY RANGE (ts);
CREATE INDEX market_lifecycle_ticker_ts ON market_lifecycle (ticker, ts, event_type);

-- The fact tables that get one partition per UTC day.
CREATE TABLE partitioned_tables (name text COLLATE "C" PRIMARY KEY);
INSERT INTO partitioned_tables VALUES
    ('trades'), ('orderbook_deltas'), ('orderbook_snapshots'), ('market_lifecycle');

-- Creates the daily partitions (named <table>_pYYYYMMDD, bounds at UTC midnight) of every fact table for the UTC
-- days that intersect the half-open range [p_from, p_to). Exactly the needed ones, idempotent, and safe to call
-- concurrently (an advisory lock serializes creators). Returns how many partitions it created.
CREATE FUNCTION ensure_daily_partitions(p_from timestamptz, p_to timestamptz) RETURNS integer
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
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, tbl, day_start, day_start + interval '24 hours');
                created := created + 1;
            END IF;
        END LOOP;
        -- UTC days are always 24 hours; '1 day' would follow the session time zone's DST
        day_start := day_start + interval '24 hours';
    END LOOP;
    RETURN created;
END
$$;
