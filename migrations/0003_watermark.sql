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

CREATE TRIGGER trades_write_lock BEFORE INSERT OR UPDATE OR DELETE ON trades
    FOR EACH STATEMENT EXECUTE FUNCTION fact_write_lock();
CREATE TRIGGER trades_data_version AFTER INSERT ON trades
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION data_version_advance();
CREATE TRIGGER orderbook_deltas_write_lock BEFORE INSERT OR UPDATE OR DELETE ON orderbook_deltas
    FOR EACH STATEMENT EXECUTE FUNCTION fact_write_lock();
CREATE TRIGGER orderbook_deltas_data_version AFTER INSERT ON orderbook_deltas
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION data_version_advance();
CREATE TRIGGER orderbook_snapshots_write_lock BEFORE INSERT OR UPDATE OR DELETE ON orderbook_snapshots
    FOR EACH STATEMENT EXECUTE FUNCTION fact_write_lock();
CREATE TRIGGER orderbook_snapshots_data_version AFTER INSERT ON orderbook_snapshots
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION data_version_advance();
CREATE TRIGGER market_lifecycle_write_lock BEFORE INSERT OR UPDATE OR DELETE ON market_lifecycle
    FOR EACH STATEMENT EXECUTE FUNCTION fact_write_lock();
CREATE TRIGGER market_lifecycle_data_version AFTER INSERT ON market_lifecycle
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION data_version_advance();
