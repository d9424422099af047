-- Data versions: the watermark a replay reads at, and fact writes that take their ingest_seq in commit order.
--
-- A replay reports the highest ingest_seq it could see, and a re-run pinned to that watermark must see exactly the
-- same rows. Sequence values are drawn before commit, so two concurrent writers could commit out of order: a
-- reader between the two commits would see seq 11 but not seq 10, and a re-run pinned to 11 would later see 10.
-- Hence:
-- * every statement that writes a fact table first takes one transaction-scoped advisory lock (a BEFORE
--   STATEMENT trigger fires before any row, so before any default nextval() is evaluated). Fact writers thus
--   run one at a time from their first draw until they commit, and ingest_seq order is commit order;
-- * the same writer moves data_version.watermark to the highest ingest_seq it stored, in its own transaction.
--   A reader's snapshot therefore holds either all of a write and its watermark, or neither: the watermark it
--   reads is exactly the highest ingest_seq visible to it.
-- Writes addressed to a partition directly bypass both triggers (as they bypass coverage): write to the parents.

CREATE TABLE data_version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    watermark   bigint NOT NULL
);

-- Lock out writers until the migration commits, so that the backfill below sees every row.
LOCK TABLE trades, orderbook_deltas, orderbook_snapshots, market_lifecycle IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO data_version (watermark)
SELECT COALESCE(max(seq), 0)
  FROM (SELECT max(ingest_seq) AS seq FROM trades
        UNION ALL SELECT max(ingest_seq) FROM orderbook_deltas
        UNION ALL SELECT max(ingest_seq) FROM orderbook_snapshots
        UNION ALL SELECT max(ingest_seq) FROM market_lifecycle) AS per_table;

CREATE FUNCTION fact_write_lock() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kalshi_replay.fact_writes'));
    RETURN NULL;
END
$$;

CREATE FUNCTION data_version_advance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE data_version SET watermark = GREATEST(watermark, (SELECT max(ingest_seq) FROM new_rows));
    RETURN NULL;
END
$$;

-- the same two triggers on each fact table, named <table>_write_lock and <table>_data_version
DO $$
DECLARE
    fact text;
BEGIN
    FOREACH fact IN ARRAY ARRAY['trades', 'orderbook_deltas', 'orderbook_snapshots', 'market_lifecycle'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE ON %I
                            FOR EACH STATEMENT EXECUTE FUNCTION fact_write_lock()', fact || '_write_lock', fact);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows
                            FOR EACH STATEMENT EXECUTE FUNCTION data_version_advance()', fact || '_data_version', fact);
    END LOOP;
END
$$;
