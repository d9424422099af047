//! Coverage: the per-market, per-day counts that triggers keep at write time (inserts, ON CONFLICT DO NOTHING,
//! COPY, concurrent writers, late rows, deletes, updates, the migration's backfill) always equal a recount of the
//! fact tables, and GetCoverage's answer (ranges, days, gaps, NOT_FOUND, every INVALID_ARGUMENT) built from them.

mod common;

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use common::TestDb;
use kalshi_replay::{
    error::Error,
    generate::{DatasetSpec, generate},
    proto::{CoverageGap, GetCoverageRequest, MarketCoverage},
    reference::coverage::{self, MAX_TICKERS},
    store::migrate::MIGRATIONS,
    store::partitions,
    time,
};
use prost_types::Timestamp;
use tokio_postgres::{Client, GenericClient};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_utc()
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn wire(s: &str) -> Option<Timestamp> {
    Some(time::to_proto(at(s)))
}

/// A migrated database with partitions for [from, to) and these markets.
async fn setup(from: &str, to: &str, markets: &[&str]) -> (TestDb, Client) {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    partitions::ensure_range(&client, at(from), at(to)).await.expect("partitions");
    add_markets(&client, markets).await;
    (db, client)
}

async fn add_markets(client: &impl GenericClient, markets: &[&str]) {
    client
        .execute(
            "INSERT INTO markets (ticker, event_ticker, series_ticker, status, updated_at)
             SELECT t, 'KXT-26JAN', 'KXT', 3, '2026-01-01Z' FROM unnest($1::text[]) AS t",
            &[&markets],
        )
        .await
        .expect("markets");
}

/// Inserts trades of one market as the ingest will, skipping the ones already stored; returns how many it stored.
/// Trade ids are the timestamps, so that re-inserting a time is a duplicate.
async fn insert_trades(client: &impl GenericClient, ticker: &str, times: &[&str]) -> u64 {
    let rows: Vec<(&str, String)> = times.iter().map(|t| (ticker, (*t).to_owned())).collect();
    insert_trade_rows(client, &rows).await
}

/// Inserts (ticker, time) trades in one statement, in the given order.
async fn insert_trade_rows(client: &impl GenericClient, rows: &[(&str, String)]) -> u64 {
    let tickers: Vec<&str> = rows.iter().map(|(ticker, _)| *ticker).collect();
    let ts: Vec<DateTime<Utc>> = rows.iter().map(|(_, t)| at(t)).collect();
    client
        .execute(
            "INSERT INTO trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side)
             SELECT ts, ticker, ts::text, 500000, 100, 1 FROM unnest($1::timestamptz[], $2::text[]) AS r(ts, ticker)
             ON CONFLICT DO NOTHING",
            &[&ts, &tickers],
        )
        .await
        .expect("insert trades")
}

async fn insert_deltas(client: &impl GenericClient, ticker: &str, times: &[&str]) -> u64 {
    let ts: Vec<DateTime<Utc>> = times.iter().map(|t| at(t)).collect();
    client
        .execute(
            "INSERT INTO orderbook_deltas (ts, ticker, sid, seq, side, price_micros, delta_centi)
             SELECT ts, $2, 1, nextval('ingest_seq'), 1, 500000, 100 FROM unnest($1::timestamptz[]) AS ts",
            &[&ts, &ticker],
        )
        .await
        .expect("insert deltas")
}

async fn insert_snapshots(client: &impl GenericClient, ticker: &str, times: &[&str]) -> u64 {
    let ts: Vec<DateTime<Utc>> = times.iter().map(|t| at(t)).collect();
    client
        .execute(
            "INSERT INTO orderbook_snapshots (ts, ticker, sid, seq, yes_price_micros, yes_size_centi,
                                              no_price_micros, no_size_centi)
             SELECT ts, $2, 1, nextval('ingest_seq'), '{}', '{}', '{}', '{}' FROM unnest($1::timestamptz[]) AS ts",
            &[&ts, &ticker],
        )
        .await
        .expect("insert snapshots")
}

/// One row of coverage_daily, or of the same aggregate recounted from the fact tables.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DayRow {
    ticker: String,
    day: NaiveDate,
    trades: i64,
    deltas: i64,
    snapshots: i64,
    first_trade: Option<DateTime<Utc>>,
    last_trade: Option<DateTime<Utc>>,
}

impl DayRow {
    fn new(
        ticker: &str,
        day: &str,
        (trades, deltas, snapshots): (i64, i64, i64),
        trade_span: Option<(&str, &str)>,
    ) -> Self {
        Self {
            ticker: ticker.to_owned(),
            day: self::day(day),
            trades,
            deltas,
            snapshots,
            first_trade: trade_span.map(|(first, _)| at(first)),
            last_trade: trade_span.map(|(_, last)| at(last)),
        }
    }
}

const SELECT_COVERAGE_DAILY: &str = "
SELECT ticker, day, trade_count, delta_count, snapshot_count, first_trade_ts, last_trade_ts
  FROM coverage_daily ORDER BY ticker, day";

/// The truth, counted from the fact tables.
const RECOUNT: &str = "
WITH t AS (SELECT ticker, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n, min(ts) AS first, max(ts) AS last
             FROM trades GROUP BY 1, 2),
     d AS (SELECT ticker, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM orderbook_deltas GROUP BY 1, 2),
     s AS (SELECT ticker, (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM orderbook_snapshots GROUP BY 1, 2)
SELECT ticker, day, coalesce(t.n, 0), coalesce(d.n, 0), coalesce(s.n, 0), t.first, t.last
  FROM t FULL JOIN d USING (ticker, day) FULL JOIN s USING (ticker, day)
 ORDER BY ticker, day";

async fn day_rows(client: &impl GenericClient, sql: &str) -> Vec<DayRow> {
    let rows = client.query(sql, &[]).await.expect("day rows");
    rows.iter()
        .map(|r| DayRow {
            ticker: r.get(0),
            day: r.get(1),
            trades: r.get(2),
            deltas: r.get(3),
            snapshots: r.get(4),
            first_trade: r.get(5),
            last_trade: r.get(6),
        })
        .collect()
}

/// coverage_daily, checked against a recount of the fact tables.
async fn coverage_daily(client: &impl GenericClient) -> Vec<DayRow> {
    let kept = day_rows(client, SELECT_COVERAGE_DAILY).await;
    assert_eq!(kept, day_rows(client, RECOUNT).await, "coverage_daily differs from a recount");
    kept
}

async fn coverage_of(
    client: &Client,
    tickers: &[&str],
    start: Option<&str>,
    end: Option<&str>,
) -> Result<Vec<MarketCoverage>, Error> {
    let tickers: Vec<String> = tickers.iter().map(|t| (*t).to_owned()).collect();
    coverage::coverage(client, &tickers, start.map(at), end.map(at)).await
}

fn gap(start: &str, end: &str) -> CoverageGap {
    CoverageGap { gap_start: wire(start), gap_end: wire(end) }
}

fn day_starts(market: &MarketCoverage) -> Vec<Timestamp> {
    market.days.iter().map(|d| d.day_start.expect("day_start")).collect()
}

#[tokio::test]
async fn counts_follow_inserts_across_a_day_boundary_and_a_month_end() {
    let (_db, client) = setup("2026-01-30T00:00:00Z", "2026-02-03T00:00:00Z", &["A", "B"]).await;
    let last_instant = "2026-01-31T23:59:59.999999Z";
    let midnight = "2026-02-01T00:00:00Z";

    insert_trades(&client, "A", &["2026-01-31T10:00:00Z", last_instant, midnight, "2026-02-01T00:00:00.000001Z"]).await;
    insert_deltas(&client, "A", &["2026-01-31T12:00:00Z", last_instant, midnight]).await;
    insert_snapshots(&client, "A", &[midnight]).await;
    // B: order book only, on the first day
    insert_deltas(&client, "B", &["2026-01-30T00:00:00Z"]).await;

    assert_eq!(
        coverage_daily(&client).await,
        [
            DayRow::new("A", "2026-01-31", (2, 2, 0), Some(("2026-01-31T10:00:00Z", last_instant))),
            DayRow::new("A", "2026-02-01", (2, 1, 1), Some((midnight, "2026-02-01T00:00:00.000001Z"))),
            DayRow::new("B", "2026-01-30", (0, 1, 0), None),
        ]
    );

    let answer = coverage_of(&client, &["B", "A"], None, None).await.expect("coverage");
    let (b, a) = (&answer[0], &answer[1]);
    assert_eq!((a.market_ticker.as_str(), b.market_ticker.as_str()), ("A", "B"), "request order");
    assert_eq!((a.trade_count, a.delta_count, a.snapshot_count), (4, 3, 1));
    assert_eq!(a.first_trade_time, wire("2026-01-31T10:00:00Z"));
    assert_eq!(a.last_trade_time, wire("2026-02-01T00:00:00.000001Z"));
    assert_eq!(day_starts(a), [wire("2026-01-31T00:00:00Z").unwrap(), wire(midnight).unwrap()]);
    assert_eq!((a.days[1].trade_count, a.days[1].delta_count, a.days[1].snapshot_count), (2, 1, 1));
    assert!(a.gaps.is_empty());
    assert_eq!((b.trade_count, b.delta_count, b.snapshot_count), (0, 1, 0));
    assert_eq!((b.first_trade_time, b.last_trade_time), (None, None), "no trades, no trade times");

    // a range of one day counts that day only, first and last trade included
    let jan31 = coverage_of(&client, &["A"], Some("2026-01-31T00:00:00Z"), Some(midnight)).await.expect("jan 31");
    assert_eq!((jan31[0].trade_count, jan31[0].delta_count, jan31[0].snapshot_count), (2, 2, 0));
    assert_eq!(jan31[0].last_trade_time, wire(last_instant));
}

#[tokio::test]
async fn insert_on_conflict_do_nothing_counts_only_the_rows_it_stored() {
    let (_db, client) = setup("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", &["A"]).await;
    let first = ["2026-01-05T01:00:00Z", "2026-01-05T02:00:00Z", "2026-01-05T03:00:00Z"];
    assert_eq!(insert_trades(&client, "A", &first).await, 3);
    // the same three again: nothing stored, nothing counted
    assert_eq!(insert_trades(&client, "A", &first).await, 0);
    // two of them again with an earlier and a later new one
    let again = ["2026-01-05T00:30:00Z", "2026-01-05T01:00:00Z", "2026-01-05T03:00:00Z", "2026-01-05T04:00:00Z"];
    assert_eq!(insert_trades(&client, "A", &again).await, 2);

    // ON CONFLICT DO UPDATE (a replaced snapshot) counts the inserted rows only, not the updated ones
    let upsert = "INSERT INTO orderbook_snapshots (ts, ticker, sid, seq, yes_price_micros, yes_size_centi,
                                                   no_price_micros, no_size_centi)
                  SELECT ts, 'A', 1, 1, '{500000}', '{100}', '{}', '{}' FROM unnest($1::timestamptz[]) AS ts
                  ON CONFLICT (ts, ticker, sid, seq) DO UPDATE SET yes_size_centi = '{200}'";
    let once = vec![at("2026-01-05T05:00:00Z")];
    let twice = vec![at("2026-01-05T05:00:00Z"), at("2026-01-05T06:00:00Z")];
    client.execute(upsert, &[&once]).await.expect("snapshot");
    assert_eq!(client.execute(upsert, &[&twice]).await.expect("replace snapshot"), 2);
    assert_eq!(
        coverage_daily(&client).await,
        [DayRow::new("A", "2026-01-05", (5, 0, 2), Some(("2026-01-05T00:30:00Z", "2026-01-05T04:00:00Z")))]
    );
}

#[tokio::test]
async fn copy_of_the_generated_dataset_is_counted_exactly() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    // across a month end, every fact table loaded by binary COPY into the partitioned parents
    let spec = DatasetSpec {
        seed: 3,
        markets: 24,
        days: 3,
        trades: 20_000,
        start: NaiveDate::from_ymd_opt(2026, 1, 30).expect("date"),
    };
    generate(&mut client, &spec).await.expect("generate");
    let kept = coverage_daily(&client).await;
    assert_eq!(kept.iter().map(|d| d.trades).sum::<i64>(), 20_000);
    assert!(kept.iter().any(|d| d.deltas > 0) && kept.iter().any(|d| d.snapshots > 0), "{kept:?}");

    // and GetCoverage over every market at once agrees with the fact tables
    let per_market = client
        .query(
            "SELECT m.ticker, count(t.ts), min(t.ts), max(t.ts)
               FROM markets m LEFT JOIN trades t ON t.ticker = m.ticker
              GROUP BY m.ticker ORDER BY m.ticker",
            &[],
        )
        .await
        .expect("per market");
    let tickers: Vec<String> = per_market.iter().map(|r| r.get(0)).collect();
    let answer = coverage::coverage(&client, &tickers, None, None).await.expect("coverage");
    assert_eq!(answer.len(), tickers.len());
    for (row, market) in per_market.iter().zip(&answer) {
        assert_eq!(market.market_ticker, row.get::<_, String>(0));
        assert_eq!(market.trade_count, row.get::<_, i64>(1), "{}", market.market_ticker);
        assert_eq!(market.first_trade_time, row.get::<_, Option<DateTime<Utc>>>(2).map(time::to_proto));
        assert_eq!(market.last_trade_time, row.get::<_, Option<DateTime<Utc>>>(3).map(time::to_proto));
        let days = kept.iter().filter(|d| d.ticker == market.market_ticker);
        assert_eq!(market.days.len(), days.clone().count());
        assert_eq!(market.delta_count, days.clone().map(|d| d.deltas).sum::<i64>());
        assert_eq!(market.snapshot_count, days.map(|d| d.snapshots).sum::<i64>());
    }
}

#[tokio::test]
async fn concurrent_writers_of_the_same_market_day_are_both_counted() {
    let (db, client) = setup("2026-01-05T00:00:00Z", "2026-01-07T00:00:00Z", &["A", "B", "C"]).await;

    // One transaction holds the (A, Jan 5) row; the other waits for it, then adds to what it committed.
    let mut first = db.client().await;
    let tx = first.transaction().await.expect("begin");
    insert_trades(&tx, "A", &["2026-01-05T01:00:00Z", "2026-01-05T02:00:00Z"]).await;
    let mut second = db.client().await;
    let waiting = tokio::spawn(async move {
        let tx = second.transaction().await.expect("begin");
        insert_trades(&tx, "A", &["2026-01-05T00:30:00Z", "2026-01-05T03:00:00Z", "2026-01-05T04:00:00Z"]).await;
        tx.commit().await.expect("commit second");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second writer waits for the first one's row lock");
    tx.commit().await.expect("commit first");
    waiting.await.expect("second writer");
    assert_eq!(
        coverage_daily(&client).await,
        [DayRow::new("A", "2026-01-05", (5, 0, 0), Some(("2026-01-05T00:30:00Z", "2026-01-05T04:00:00Z")))]
    );

    // Many writers at once, each statement with rows of several market-days in its own order: the trigger locks
    // them in (ticker, day) order, so single-statement writers never deadlock, and no count is lost.
    let writers = (0..6).map(|writer| {
        let config = db.config.clone();
        tokio::spawn(async move {
            let mut client = kalshi_replay::store::db::connect(&config, common::TIMEOUT).await.expect("connect");
            for round in 0..20 {
                let mut rows = Vec::new();
                for (k, market) in ["A", "B", "C"].iter().enumerate() {
                    for day in ["05", "06"] {
                        rows.push((*market, format!("2026-01-{day}T10:{writer:02}:{round:02}.{k:06}Z")));
                    }
                }
                let shift = (writer + round) % rows.len();
                rows.rotate_left(shift);
                if round % 2 == 1 {
                    rows.reverse();
                }
                let tx = client.transaction().await.expect("begin");
                assert_eq!(insert_trade_rows(&tx, &rows).await, 6);
                tx.commit().await.expect("commit");
                insert_deltas(&client, rows[0].0, &[&rows[0].1]).await;
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.expect("writer");
    }
    let kept = coverage_daily(&client).await;
    assert_eq!(kept.iter().map(|d| d.trades).sum::<i64>(), 5 + 6 * 20 * 6);
    assert_eq!(kept.iter().map(|d| d.deltas).sum::<i64>(), 6 * 20);
}

#[tokio::test]
async fn late_trades_into_an_old_day_update_that_day() {
    let (_db, client) = setup("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z", &["A"]).await;
    insert_trades(&client, "A", &["2026-01-05T12:00:00Z", "2026-01-07T12:00:00Z"]).await;
    // out of order: days later than them were written first
    insert_trades(&client, "A", &["2026-01-05T23:00:00Z", "2026-01-05T01:00:00Z"]).await;
    insert_trades(&client, "A", &["2026-01-06T05:00:00Z"]).await;
    insert_trades(&client, "A", &["2026-01-05T06:00:00Z"]).await;
    assert_eq!(
        coverage_daily(&client).await,
        [
            DayRow::new("A", "2026-01-05", (4, 0, 0), Some(("2026-01-05T01:00:00Z", "2026-01-05T23:00:00Z"))),
            DayRow::new("A", "2026-01-06", (1, 0, 0), Some(("2026-01-06T05:00:00Z", "2026-01-06T05:00:00Z"))),
            DayRow::new("A", "2026-01-07", (1, 0, 0), Some(("2026-01-07T12:00:00Z", "2026-01-07T12:00:00Z"))),
        ]
    );
}

#[tokio::test]
async fn deletes_subtract_and_updates_move_counts() {
    let (_db, client) = setup("2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z", &["A", "B"]).await;
    insert_trades(&client, "A", &["2026-01-05T01:00:00Z", "2026-01-05T02:00:00Z", "2026-01-05T03:00:00Z"]).await;
    insert_trades(&client, "A", &["2026-01-06T01:00:00Z"]).await;
    insert_deltas(&client, "A", &["2026-01-06T02:00:00Z", "2026-01-06T03:00:00Z"]).await;
    insert_snapshots(&client, "B", &["2026-01-07T00:00:00Z"]).await;

    // the first and the last trade of Jan 5 go: the count drops and first/last are recounted
    let gone = client
        .execute("DELETE FROM trades WHERE ts IN ('2026-01-05T01:00:00Z', '2026-01-05T03:00:00Z')", &[])
        .await
        .expect("delete trades");
    assert_eq!(gone, 2);
    // Jan 6 keeps its order book but loses its only trade: no trade times left
    client.execute("DELETE FROM trades WHERE ts = '2026-01-06T01:00:00Z'", &[]).await.expect("delete trade");
    client.execute("DELETE FROM orderbook_deltas WHERE ts = '2026-01-06T02:00:00Z'", &[]).await.expect("delete");
    // B's only day loses everything: the day is gone
    client.execute("DELETE FROM orderbook_snapshots WHERE ticker = 'B'", &[]).await.expect("delete snapshots");
    assert_eq!(
        coverage_daily(&client).await,
        [
            DayRow::new("A", "2026-01-05", (1, 0, 0), Some(("2026-01-05T02:00:00Z", "2026-01-05T02:00:00Z"))),
            DayRow::new("A", "2026-01-06", (0, 1, 0), None),
        ]
    );
    let b = coverage_of(&client, &["B"], None, None).await.expect("coverage");
    assert!(b[0].days.is_empty() && b[0].gaps.is_empty(), "{b:?}");

    // a trade moved to another day and market is counted there
    client
        .execute("UPDATE trades SET ts = '2026-01-07T08:00:00Z', ticker = 'B' WHERE ticker = 'A'", &[])
        .await
        .expect("move trade");
    // an update that moves nothing (as ON CONFLICT DO UPDATE would) changes nothing
    client.execute("UPDATE orderbook_deltas SET delta_centi = 7", &[]).await.expect("update deltas");
    assert_eq!(
        coverage_daily(&client).await,
        [
            DayRow::new("A", "2026-01-06", (0, 1, 0), None),
            DayRow::new("B", "2026-01-07", (1, 0, 0), Some(("2026-01-07T08:00:00Z", "2026-01-07T08:00:00Z"))),
        ]
    );
}

#[tokio::test]
async fn a_delete_waits_for_a_concurrent_insert_before_recounting_first_and_last() {
    let (db, client) = setup("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", &["A"]).await;
    insert_trades(&client, "A", &["2026-01-05T10:00:00Z", "2026-01-05T11:00:00Z"]).await;

    // an uncommitted insert of an earlier trade holds the day's row...
    let mut writer = db.client().await;
    let tx = writer.transaction().await.expect("begin");
    insert_trades(&tx, "A", &["2026-01-05T09:00:00Z"]).await;
    // ...so deleting the first trade waits for it, and its recount then sees the new first trade
    let deleter = db.client().await;
    let deleting = tokio::spawn(async move {
        deleter.execute("DELETE FROM trades WHERE ts = '2026-01-05T10:00:00Z'", &[]).await.expect("delete")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!deleting.is_finished(), "the delete waits for the insert");
    tx.commit().await.expect("commit");
    assert_eq!(deleting.await.expect("deleter"), 1);
    assert_eq!(
        coverage_daily(&client).await,
        [DayRow::new("A", "2026-01-05", (2, 0, 0), Some(("2026-01-05T09:00:00Z", "2026-01-05T11:00:00Z")))]
    );
}

#[tokio::test]
async fn the_migration_backfills_a_database_that_already_holds_data() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    let (schema, coverage_migration) = (&MIGRATIONS[0], &MIGRATIONS[1]);
    assert_eq!((schema.version, coverage_migration.version), (1, 2));
    client.batch_execute(schema.sql).await.expect("schema");
    partitions::ensure_range(&client, at("2026-01-31T00:00:00Z"), at("2026-02-02T00:00:00Z")).await.expect("parts");
    insert_trades(&client, "A", &["2026-01-31T05:00:00Z", "2026-01-31T06:00:00Z", "2026-02-01T07:00:00Z"]).await;
    insert_deltas(&client, "A", &["2026-02-01T08:00:00Z"]).await;
    insert_snapshots(&client, "B", &["2026-01-31T09:00:00Z", "2026-01-31T10:00:00Z"]).await;

    client.batch_execute(&format!("BEGIN; {} COMMIT;", coverage_migration.sql)).await.expect("coverage migration");
    assert_eq!(
        coverage_daily(&client).await,
        [
            DayRow::new("A", "2026-01-31", (2, 0, 0), Some(("2026-01-31T05:00:00Z", "2026-01-31T06:00:00Z"))),
            DayRow::new("A", "2026-02-01", (1, 1, 0), Some(("2026-02-01T07:00:00Z", "2026-02-01T07:00:00Z"))),
            DayRow::new("B", "2026-01-31", (0, 0, 2), None),
        ]
    );
    // and the triggers take over from there
    insert_trades(&client, "A", &["2026-01-31T04:00:00Z"]).await;
    assert_eq!(coverage_daily(&client).await[0].trades, 3);
}

#[tokio::test]
async fn gaps_are_the_days_without_data_inside_the_range() {
    let (_db, client) = setup("2026-01-01T00:00:00Z", "2026-01-08T00:00:00Z", &["A", "EMPTY"]).await;
    // data on days 1, 2 and 5, each kind alone
    insert_trades(&client, "A", &["2026-01-01T12:00:00Z"]).await;
    insert_deltas(&client, "A", &["2026-01-02T12:00:00Z"]).await;
    insert_snapshots(&client, "A", &["2026-01-05T12:00:00Z"]).await;

    // a range of 7 days, given with partial days: widened to [Jan 1, Jan 8)
    let week = coverage_of(&client, &["A", "EMPTY"], Some("2026-01-01T09:30:00Z"), Some("2026-01-07T00:00:01Z"))
        .await
        .expect("week");
    let (a, empty) = (&week[0], &week[1]);
    assert_eq!(
        day_starts(a),
        ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z"].map(|d| wire(d).unwrap())
    );
    assert_eq!(
        a.gaps,
        [gap("2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z"), gap("2026-01-06T00:00:00Z", "2026-01-08T00:00:00Z")]
    );
    // a market without data in a given range: zero counts, no days, one gap over all of it
    assert_eq!((empty.trade_count, empty.delta_count, empty.snapshot_count), (0, 0, 0));
    assert_eq!((empty.first_trade_time, empty.last_trade_time), (None, None));
    assert!(empty.days.is_empty());
    assert_eq!(empty.gaps, [gap("2026-01-01T00:00:00Z", "2026-01-08T00:00:00Z")]);

    // without a range, it spans the market's own data; without data, there is no range and no gap
    let all = coverage_of(&client, &["A", "EMPTY"], None, None).await.expect("all");
    assert_eq!(all[0].gaps, [gap("2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z")]);
    assert!(all[1].days.is_empty() && all[1].gaps.is_empty());

    // one open bound: the other comes from the data
    let from_day_2 = coverage_of(&client, &["A"], Some("2026-01-02T00:00:00Z"), None).await.expect("from");
    assert_eq!((from_day_2[0].trade_count, from_day_2[0].delta_count, from_day_2[0].snapshot_count), (0, 1, 1));
    assert_eq!(from_day_2[0].gaps, [gap("2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z")]);
    let until_day_4 = coverage_of(&client, &["A"], None, Some("2026-01-04T00:00:00Z")).await.expect("until");
    assert_eq!(day_starts(&until_day_4[0]).len(), 2);
    assert_eq!(until_day_4[0].gaps, [gap("2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z")]);
    assert_eq!(until_day_4[0].first_trade_time, wire("2026-01-01T12:00:00Z"));
}

#[tokio::test]
async fn unknown_tickers_are_not_found_all_of_them_named() {
    let (_db, client) = setup("2026-01-05T00:00:00Z", "2026-01-07T00:00:00Z", &["KNOWN"]).await;
    // a ticker with trades but no market row is a market (its trades were stored before its reference row)
    insert_trades(&client, "ORPHAN", &["2026-01-05T01:00:00Z", "2026-01-06T01:00:00Z"]).await;
    let error = coverage_of(&client, &["ZZZ", "KNOWN", "ORPHAN", "AAA"], None, None).await.expect_err("unknown");
    match error {
        Error::NotFound { kind, names } => {
            assert_eq!(kind, "market ticker");
            assert_eq!(names, ["AAA", "ZZZ"]);
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let orphan = coverage_of(&client, &["ORPHAN"], None, None).await.expect("known by its trades");
    assert_eq!(orphan[0].trade_count, 2);
}

fn request(tickers: &[&str], start: Option<Timestamp>, end: Option<Timestamp>) -> GetCoverageRequest {
    GetCoverageRequest {
        market_tickers: tickers.iter().map(|t| (*t).to_owned()).collect(),
        start_time: start,
        end_time: end,
    }
}

#[track_caller]
fn assert_invalid(request: &GetCoverageRequest, field: &str, reason: &str) {
    match coverage::validate(request) {
        Err(Error::InvalidArgument { field: f, reason: r }) => {
            assert_eq!(f, field, "{r}");
            assert!(r.contains(reason), "{field}: {r}");
        }
        other => panic!("expected INVALID_ARGUMENT on {field}, got {other:?}"),
    }
}

#[test]
fn every_invalid_request_names_its_field() {
    assert_invalid(&request(&[], None, None), "market_tickers", "1 to 10000");
    let too_many: Vec<String> = (0..=MAX_TICKERS).map(|i| format!("M{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_invalid(&request(&too_many, None, None), "market_tickers", "got 10001");
    assert_invalid(&request(&["A", ""], None, None), "market_tickers[1]", "empty");
    assert_invalid(&request(&["A", "B", "A"], None, None), "market_tickers[2]", "duplicate of market_tickers[0]: A");

    let (jan5, jan6) = (wire("2026-01-05T00:00:00Z"), wire("2026-01-06T00:00:00Z"));
    assert_invalid(&request(&["A"], jan6, jan5), "end_time", "after start_time");
    assert_invalid(&request(&["A"], jan5, jan5), "end_time", "after start_time");
    let sub_micro = Some(Timestamp { seconds: 1_767_571_200, nanos: 1 });
    assert_invalid(&request(&["A"], sub_micro, None), "start_time", "multiple of 1000");
    assert_invalid(&request(&["A"], None, sub_micro), "end_time", "multiple of 1000");
    let year_10000 = Some(Timestamp { seconds: 253_402_300_800, nanos: 0 });
    assert_invalid(&request(&["A"], None, year_10000), "end_time", "9999-12-31");
    let year_0 = Some(Timestamp { seconds: -62_135_596_801, nanos: 0 });
    assert_invalid(&request(&["A"], year_0, None), "start_time", "0001-01-01");

    // the limits themselves are fine, and so are the extremes of Timestamp's range
    let most: Vec<&str> = too_many[..MAX_TICKERS].to_vec();
    let (tickers, start, end) = coverage::validate(&request(&most, jan5, jan6)).expect("valid");
    assert_eq!(
        (tickers.len(), start, end),
        (MAX_TICKERS, Some(at("2026-01-05T00:00:00Z")), Some(at("2026-01-06T00:00:00Z")))
    );
    let first = Some(Timestamp { seconds: -62_135_596_800, nanos: 0 });
    let last = Some(Timestamp { seconds: 253_402_300_799, nanos: 999_999_000 });
    coverage::validate(&request(&["A"], first, last)).expect("whole Timestamp range");
}

#[tokio::test]
async fn the_extremes_of_the_timestamp_range_are_answered() {
    let (_db, client) = setup("2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", &["A"]).await;
    insert_trades(&client, "A", &["2026-01-05T01:00:00Z"]).await;
    let request = request(
        &["A"],
        Some(Timestamp { seconds: -62_135_596_800, nanos: 0 }),
        Some(Timestamp { seconds: 253_402_300_799, nanos: 999_999_000 }),
    );
    let (tickers, start, end) = coverage::validate(&request).expect("valid");
    let answer = coverage::coverage(&client, &tickers, start, end).await.expect("coverage");
    assert_eq!(answer[0].trade_count, 1);
    let year_10000 = Some(Timestamp { seconds: 253_402_300_800, nanos: 0 });
    assert_eq!(
        answer[0].gaps,
        [
            gap("0001-01-01T00:00:00Z", "2026-01-05T00:00:00Z"),
            CoverageGap { gap_start: wire("2026-01-06T00:00:00Z"), gap_end: year_10000 },
        ]
    );
}
