//! The schema: migrations are idempotent and recorded; the partition function creates exactly the daily
//! partitions of a range.

mod common;

use chrono::{DateTime, Utc};
use common::TestDb;
use kalshi_replay::{
    store::migrate::{self, MIGRATIONS},
    store::partitions,
};
use tokio_postgres::Client;

/// Everything a migration can change, as sorted text: relations, columns, indexes, constraints, functions,
/// sequences.
async fn schema_fingerprint(client: &Client) -> String {
    let rows = client
        .query(
            "SELECT format('rel %s %s', c.relname, c.relkind) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
             UNION ALL
             SELECT format('col %s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default)
               FROM information_schema.columns WHERE table_schema = 'public'
             UNION ALL
             SELECT format('idx %s', indexdef) FROM pg_indexes WHERE schemaname = 'public'
             UNION ALL
             SELECT format('con %s %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint
               WHERE connamespace = 'public'::regnamespace
             UNION ALL
             SELECT format('fn %s %s', proname, md5(prosrc)) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
             ORDER BY 1",
            &[],
        )
        .await
        .expect("fingerprint");
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

async fn history(client: &Client) -> Vec<(i32, String, String, DateTime<Utc>)> {
    client
        .query("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version", &[])
        .await
        .expect("history")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn migrations_apply_once_and_a_second_run_changes_nothing() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;

    let applied = migrate::run(&mut client).await.expect("first run");
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, all);
    let schema = schema_fingerprint(&client).await;
    assert!(schema.contains("rel trades p"), "trades is partitioned:\n{schema}");
    let recorded = history(&client).await;
    assert_eq!(recorded.iter().map(|h| h.0).collect::<Vec<_>>(), all);

    let again = migrate::run(&mut client).await.expect("second run");
    assert!(again.is_empty(), "second run applied {again:?}");
    assert_eq!(schema_fingerprint(&client).await, schema);
    assert_eq!(history(&client).await, recorded);
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let db = TestDb::empty().await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(migrate::run(&mut a), migrate::run(&mut b));
    let (ra, rb) = (ra.expect("migrator a"), rb.expect("migrator b"));
    // one of them did the work, the other found it done
    assert_eq!(ra.len() + rb.len(), MIGRATIONS.len(), "{ra:?} {rb:?}");
    assert_eq!(history(&a).await.len(), MIGRATIONS.len());
}

#[tokio::test]
async fn an_edited_migration_is_refused() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    client.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", &[]).await.expect("tamper");
    let error = migrate::run(&mut client).await.expect_err("must refuse");
    assert!(error.to_string().contains("changed after it was applied"), "{error}");
}

#[tokio::test]
async fn a_migration_unknown_to_the_binary_is_refused() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    client
        .execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')", &[])
        .await
        .expect("insert");
    let error = migrate::run(&mut client).await.expect_err("must refuse");
    assert!(error.to_string().contains("9999") && error.to_string().contains("unknown"), "{error}");
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

/// (partition name, lower bound, upper bound) of every partition of `table`, sorted.
async fn partitions_of(client: &Client, table: &str) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let rows = client
        .query(
            "SELECT c.relname::text,
                    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
                    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .expect("partitions");
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

const FACT_TABLES: [&str; 5] =
    ["trades", "orderbook_deltas", "orderbook_snapshots", "market_lifecycle", "kalshi_candles"];

#[tokio::test]
async fn partitions_are_exactly_the_utc_days_of_a_range_across_a_month_end() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    // a session in a zone with an offset must not shift the day boundaries
    client.batch_execute("SET TimeZone = 'America/New_York'").await.expect("tz");

    let created = partitions::ensure_range(&client, at("2026-01-30T13:00:00Z"), at("2026-02-02T00:00:00Z"))
        .await
        .expect("ensure");
    assert_eq!(created, 3 * 5, "three days for each of five tables");
    for table in FACT_TABLES {
        let expected = vec![
            (format!("{table}_p20260130"), at("2026-01-30T00:00:00Z"), at("2026-01-31T00:00:00Z")),
            (format!("{table}_p20260131"), at("2026-01-31T00:00:00Z"), at("2026-02-01T00:00:00Z")),
            (format!("{table}_p20260201"), at("2026-02-01T00:00:00Z"), at("2026-02-02T00:00:00Z")),
        ];
        assert_eq!(partitions_of(&client, table).await, expected, "{table}");
    }

    // idempotent, and an overlapping range adds only the missing day
    let again = partitions::ensure_range(&client, at("2026-01-30T00:00:00Z"), at("2026-02-02T00:00:00Z")).await;
    assert_eq!(again.expect("again"), 0);
    let overlap = partitions::ensure_range(&client, at("2026-02-01T23:59:59Z"), at("2026-02-02T00:00:00.000001Z"));
    assert_eq!(overlap.await.expect("overlap"), 5, "just 2026-02-02 for each table");

    // empty and inverted ranges create nothing
    let t = at("2026-03-01T00:00:00Z");
    assert_eq!(partitions::ensure_range(&client, t, t).await.expect("empty"), 0);
    assert_eq!(partitions::ensure_range(&client, t, at("2026-02-20T00:00:00Z")).await.expect("inverted"), 0);
    assert_eq!(partitions_of(&client, "trades").await.len(), 4);
}

#[tokio::test]
async fn rows_land_in_their_utc_day_and_concurrent_creators_do_not_collide() {
    let db = TestDb::migrated().await;
    let (a, b) = (db.client().await, db.client().await);
    let (from, to) = (at("2026-06-29T12:00:00Z"), at("2026-07-03T00:00:00Z"));
    let (ra, rb) = tokio::join!(partitions::ensure_range(&a, from, to), partitions::ensure_range(&b, from, to));
    assert_eq!(ra.expect("a") + rb.expect("b"), 4 * 5);

    a.execute(
        "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
         VALUES ('2026-06-30T23:59:59.999999Z', 'M', 'a', 500000, 100, 1),
                ('2026-07-01T00:00:00Z', 'M', 'b', 500000, 100, 2)",
        &[],
    )
    .await
    .expect("insert");
    let rows = a
        .query("SELECT tableoid::regclass::text, trade_id FROM trades ORDER BY ts, ticker, trade_id", &[])
        .await
        .expect("select");
    let placed: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(placed, vec![("trades_p20260630".into(), "a".into()), ("trades_p20260701".into(), "b".into())]);

    // a row outside every partition is refused rather than stored somewhere else
    let outside = a
        .execute(
            "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
             VALUES ('2027-01-01T00:00:00Z', 'M', 'c', 500000, 100, 1)",
            &[],
        )
        .await;
    assert!(outside.is_err());
}

#[tokio::test]
async fn partitions_ahead_cover_today_and_the_next_days() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let now = at("2026-12-31T18:30:00Z");
    assert_eq!(partitions::ensure_ahead(&client, now, 2).await.expect("ahead"), 3 * 5);
    let names: Vec<String> = partitions_of(&client, "trades").await.into_iter().map(|p| p.0).collect();
    assert_eq!(names, ["trades_p20261231", "trades_p20270101", "trades_p20270102"]);
}

#[tokio::test]
async fn every_fact_write_advances_the_watermark_to_its_highest_ingest_seq() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "SELECT ensure_daily_partitions('2026-01-05Z', '2026-01-06Z');
             INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
             VALUES ('2026-01-05T01:00:00Z', 'M', 't1', 500000, 100, 1);",
        )
        .await
        .expect("trade");
    let watermark = async || -> i64 {
        client.query_one("SELECT watermark FROM data_version", &[]).await.expect("watermark").get(0)
    };
    let highest = async |table: &str| -> i64 {
        client.query_one(&format!("SELECT max(ingest_seq) FROM {table}"), &[]).await.expect("max").get(0)
    };
    assert_eq!(watermark().await, highest("trades").await);
    let writes = [
        (
            "orderbook_deltas",
            "INSERT INTO orderbook_deltas (ts, ticker, sid, seq, side, price_micros, delta_centi)
                              VALUES ('2026-01-05T02:00:00Z', 'M', 1, 1, 1, 500000, 100)",
        ),
        (
            "orderbook_snapshots",
            "INSERT INTO orderbook_snapshots (ts, ticker, sid, seq, yes_price_micros, yes_size_centi,
                                                                  no_price_micros, no_size_centi)
                                 VALUES ('2026-01-05T03:00:00Z', 'M', 1, 2, '{}', '{}', '{}', '{}')",
        ),
        (
            "market_lifecycle",
            "INSERT INTO market_lifecycle (ts, ticker, event_type)
                              VALUES ('2026-01-05T04:00:00Z', 'M', 1)",
        ),
    ];
    for (table, insert) in writes {
        let before = watermark().await;
        client.batch_execute(insert).await.expect(table);
        let after = watermark().await;
        assert!(after > before, "{table}: {before} -> {after}");
        assert_eq!(after, highest(table).await, "{table}");
    }
    // a write whose every row was a duplicate stores nothing and leaves the watermark alone
    let before = watermark().await;
    client
        .batch_execute(
            "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
             VALUES ('2026-01-05T01:00:00Z', 'M', 't1', 500000, 100, 1) ON CONFLICT DO NOTHING",
        )
        .await
        .expect("duplicate");
    assert_eq!(watermark().await, before);
}

/// Creating a partition locks its parent exclusively. Maintenance must not wait behind a long reader (a replay
/// holds its lock until its stream ends), or every later query of the table would queue behind it.
#[tokio::test]
async fn partition_maintenance_never_queues_readers_behind_a_long_replay() {
    let db = TestDb::migrated().await;
    let long_reader = db.client().await;
    long_reader.batch_execute("BEGIN; SELECT count(*) FROM trades").await.expect("long read");
    let pool = db.database().pool(2, std::time::Duration::from_secs(10)).await.expect("pool");
    // today's partitions do not exist in the test database: maintenance has to create them
    let maintenance = tokio::spawn(partitions::maintain(pool, 2));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let reader = db.client().await;
    let started = std::time::Instant::now();
    reader.batch_execute("SET statement_timeout = '10s'").await.expect("timeout");
    reader.query_one("SELECT count(*) FROM trades", &[]).await.expect("a new reader is served");
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(3), "the reader waited {waited:?}");
    long_reader.batch_execute("COMMIT").await.expect("commit");
    maintenance.abort();
}
