//! The synthetic dataset: deterministic by seed, shaped like Kalshi's, and with order books that are consistent
//! with themselves.

mod common;

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use common::TestDb;
use kalshi_replay::generate::{DatasetSpec, generate};
use tokio_postgres::Client;

fn spec(seed: u64) -> DatasetSpec {
    DatasetSpec {
        seed,
        markets: 24,
        days: 3,
        trades: 20_000,
        start: NaiveDate::from_ymd_opt(2026, 1, 30).expect("date"),
    }
}

/// One md5 per table over every column but ingest_seq, in a total order.
async fn table_hashes(client: &Client) -> Vec<(String, String)> {
    let queries = [
        ("series", "SELECT md5(string_agg(s::text, '|' ORDER BY ticker)) FROM series s"),
        ("events", "SELECT md5(string_agg(e::text, '|' ORDER BY event_ticker)) FROM events e"),
        ("markets", "SELECT md5(string_agg(m::text, '|' ORDER BY ticker)) FROM markets m"),
        ("settlements", "SELECT md5(string_agg(s::text, '|' ORDER BY market_ticker)) FROM settlements s"),
        (
            "trades",
            "SELECT md5(string_agg(concat_ws(',', ts, ticker, trade_id, yes_price_micros, count_centi, taker_side),
                                   '|' ORDER BY ts, ticker, trade_id)) FROM trades",
        ),
        (
            "orderbook_deltas",
            "SELECT md5(string_agg(concat_ws(',', ts, ticker, sid, seq, side, price_micros, delta_centi),
                                   '|' ORDER BY ts, ticker, sid, seq)) FROM orderbook_deltas",
        ),
        (
            "orderbook_snapshots",
            "SELECT md5(string_agg(concat_ws(',', ts, ticker, sid, seq, yes_price_micros, yes_size_centi,
                                             no_price_micros, no_size_centi),
                                   '|' ORDER BY ts, ticker, sid, seq)) FROM orderbook_snapshots",
        ),
        (
            "market_lifecycle",
            "SELECT md5(string_agg(concat_ws(',', ts, ticker, event_type, open_time, close_time, result,
                                             settlement_value_micros, determined_time, settled_time),
                                   '|' ORDER BY ts, ticker, event_type)) FROM market_lifecycle",
        ),
    ];
    let mut hashes = Vec::new();
    for (table, sql) in queries {
        let hash: Option<String> = client.query_one(sql, &[]).await.expect(table).get(0);
        hashes.push((table.to_owned(), hash.unwrap_or_else(|| panic!("{table} is empty"))));
    }
    hashes
}

async fn generated(spec: &DatasetSpec) -> (TestDb, Client) {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let report = generate(&mut client, spec).await.expect("generate");
    assert_eq!(report.trades, spec.trades);
    assert_eq!(report.markets, u64::from(spec.markets));
    (db, client)
}

#[tokio::test]
async fn the_same_seed_gives_identical_rows_and_another_seed_does_not() {
    let (_a, a) = generated(&spec(7)).await;
    let (_b, b) = generated(&spec(7)).await;
    let (_c, c) = generated(&spec(8)).await;
    let (ha, hb, hc) = (table_hashes(&a).await, table_hashes(&b).await, table_hashes(&c).await);
    assert_eq!(ha, hb);
    let trades = |h: &[(String, String)]| h.iter().find(|(t, _)| t == "trades").map(|(_, v)| v.clone());
    assert_ne!(trades(&ha), trades(&hc), "another seed, other trades");
}

#[tokio::test]
async fn the_dataset_is_shaped_like_kalshi() {
    let spec = spec(42);
    let (_db, client) = generated(&spec).await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM trades").await, spec.trades as i64);
    assert_eq!(count("SELECT count(*) FROM markets").await, i64::from(spec.markets));
    // the hierarchy is linked
    assert_eq!(count("SELECT count(*) FROM markets m WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_ticker = m.event_ticker AND e.series_ticker = m.series_ticker)").await, 0);
    assert_eq!(
        count(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.ticker = e.series_ticker)"
        )
        .await,
        0
    );
    // every trade inside the range and inside its market's open window
    assert_eq!(count("SELECT count(*) FROM trades t JOIN markets m ON m.ticker = t.ticker WHERE t.ts < m.open_time OR t.ts >= m.close_time OR t.ts < '2026-01-30Z' OR t.ts >= '2026-02-02Z'").await, 0);
    assert_eq!(
        count("SELECT count(*) FROM trades t WHERE NOT EXISTS (SELECT 1 FROM markets m WHERE m.ticker = t.ticker)")
            .await,
        0
    );
    // activity is skewed: the busiest market trades far more than the median one
    let skew: f64 = client
        .query_one(
            "SELECT max(n)::float8 / percentile_cont(0.5) WITHIN GROUP (ORDER BY n)
               FROM (SELECT count(*) AS n FROM trades GROUP BY ticker) c",
            &[],
        )
        .await
        .expect("skew")
        .get(0);
    assert!(skew > 3.0, "busiest / median market = {skew}");
    // fractional counts and sub-cent prices occur
    assert!(count("SELECT count(*) FROM trades WHERE count_centi % 100 <> 0").await > 0);
    assert!(count("SELECT count(*) FROM trades WHERE yes_price_micros % 10000 <> 0").await > 0);
    // trades share a microsecond, also across markets, so replay order needs its tie-breakers
    assert!(
        count("SELECT count(*) FROM (SELECT ts FROM trades GROUP BY ts HAVING count(DISTINCT ticker) > 1) x").await > 0
    );
    // settlements exactly for the finalized markets, paying 0 or 1 USD unless void
    assert_eq!(
        count("SELECT count(*) FROM markets WHERE status = 8").await,
        count("SELECT count(*) FROM settlements").await
    );
    assert!(count("SELECT count(*) FROM settlements").await > 0, "some markets closed inside the range");
    assert_eq!(
        count(
            "SELECT count(*) FROM settlements WHERE result IN (1, 2) AND settlement_value_micros NOT IN (0, 1000000)"
        )
        .await,
        0
    );
    assert!(count("SELECT count(*) FROM market_lifecycle").await > 0);
}

type Book = [BTreeMap<i64, i64>; 2];

fn book_from(yes: (Vec<i64>, Vec<i64>), no: (Vec<i64>, Vec<i64>)) -> Book {
    [yes.0.into_iter().zip(yes.1).collect(), no.0.into_iter().zip(no.1).collect()]
}

#[tokio::test]
async fn order_books_never_go_negative_and_snapshots_match_the_deltas() {
    let (_db, client) = generated(&spec(3)).await;
    let rows = client
        .query(
            "SELECT ticker, ts, sid, seq, 0 AS kind, NULL::smallint AS side, NULL::bigint AS price,
                    NULL::bigint AS delta, yes_price_micros, yes_size_centi, no_price_micros, no_size_centi
               FROM orderbook_snapshots
             UNION ALL
             SELECT ticker, ts, sid, seq, 1, side, price_micros, delta_centi, NULL, NULL, NULL, NULL
               FROM orderbook_deltas
             ORDER BY ticker, sid, seq, kind",
            &[],
        )
        .await
        .expect("book events");
    assert!(!rows.is_empty());
    let mut books: HashMap<String, Book> = HashMap::new();
    let (mut snapshots, mut deltas) = (0, 0);
    for row in &rows {
        let ticker: String = row.get("ticker");
        if row.get::<_, i32>("kind") == 0 {
            let snapshot = book_from(
                (row.get("yes_price_micros"), row.get("yes_size_centi")),
                (row.get("no_price_micros"), row.get("no_size_centi")),
            );
            for side in &snapshot {
                assert!(side.iter().all(|(&p, &s)| p > 0 && p < 1_000_000 && s > 0), "{ticker}: {side:?}");
            }
            if let Some(book) = books.get(&ticker) {
                assert_eq!(book, &snapshot, "{ticker}: snapshot differs from the book its deltas built");
            }
            books.insert(ticker, snapshot);
            snapshots += 1;
        } else {
            let book = books.get_mut(&ticker).unwrap_or_else(|| panic!("{ticker}: delta before any snapshot"));
            let side = usize::from(row.get::<_, i16>("side") == 2);
            let price: i64 = row.get("price");
            let level = book[side].entry(price).or_insert(0);
            *level += row.get::<_, i64>("delta");
            assert!(*level >= 0, "{ticker}: level {price} went negative");
            if *level == 0 {
                book[side].remove(&price);
            }
            let (best_yes, best_no) = (book[0].keys().next_back(), book[1].keys().next_back());
            if let (Some(y), Some(n)) = (best_yes, best_no) {
                assert!(y + n < 1_000_000, "{ticker}: crossed book {y} + {n}");
            }
            deltas += 1;
        }
    }
    assert!(snapshots > 24 && deltas > 1000, "{snapshots} snapshots, {deltas} deltas");
}
