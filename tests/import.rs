//! `import` against a real PostgreSQL: Kalshi's fixtures in both formats, compressed or not, stored exactly and
//! once; a re-import adds nothing; a bad line stops the import with its file and line, or is skipped and counted;
//! and the binary as a user runs it.

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use common::{TIMEOUT, TestApp};
use kalshi_replay::{
    error::Error,
    import::{self, Options, ProgressMode, Report},
    limits::Limits,
    proto::{
        GetMarketRequest, GetSettlementRequest, MarketStatus, SettlementResult, StreamTradesRequest,
        reference_service_client::ReferenceServiceClient, replay_service_client::ReplayServiceClient,
        stream_trades_response,
    },
};
use prost_types::Timestamp;
use tokio_postgres::Client as PgClient;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kalshi");

async fn run(app: &TestApp, paths: Vec<PathBuf>, skip_bad: bool) -> Result<Report, Error> {
    let pool = app.db.database().pool(2, TIMEOUT).await.expect("pool");
    import::run(&pool, &Options { paths, skip_bad, progress: ProgressMode::Off, limits: Limits::default() }).await
}

/// Every row the importer writes, as JSON text sorted per table, without the columns that depend on when it
/// ran (ingest_seq, and updated_at where the source gives none).
async fn dump(db: &PgClient) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "trades",
        "orderbook_snapshots",
        "orderbook_deltas",
        "market_lifecycle",
        "series",
        "events",
        "markets",
        "settlements",
        "coverage_daily",
    ] {
        let sql =
            format!("SELECT '{table} ' || (to_jsonb(t) - 'ingest_seq' - 'updated_at')::text FROM {table} t ORDER BY 1");
        out.extend(db.query(&sql, &[]).await.expect("dump").iter().map(|r| r.get::<_, String>(0)));
    }
    out
}

/// The fixtures in a temporary directory, some compressed: gzip, zstd, and a gzip of two members.
fn compressed_fixtures() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(FIXTURES).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).expect("read");
        let gzip = |bytes: &[u8]| {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(bytes).expect("gzip");
            encoder.finish().expect("gzip")
        };
        let (name, bytes) = match name.as_str() {
            "trades_current.json" | "markets_legacy.json" => (format!("{name}.gz"), gzip(&bytes)),
            "ws_current.jsonl" | "events.json" => {
                (format!("{name}.zst"), zstd::stream::encode_all(bytes.as_slice(), 3).expect("zstd"))
            }
            "ws_legacy.jsonl" => {
                // two gzip members, as `cat a.gz b.gz` makes
                let half = bytes.iter().position(|&b| b == b'\n').expect("a line") + 1;
                let mut both = gzip(&bytes[..half]);
                both.extend(gzip(&bytes[half..]));
                (format!("{name}.gz"), both)
            }
            _ => (name, bytes),
        };
        // one level down, to import a directory recursively
        let sub = dir.path().join(if name.starts_with("ws_") { "ws" } else { "rest" });
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(sub.join(name), bytes).expect("write");
    }
    std::fs::write(dir.path().join(".hidden.jsonl"), "not json").expect("hidden file is skipped");
    dir
}

#[tokio::test]
async fn kalshi_fixtures_import_exactly_once_compressed_or_not() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    let channel = app.channel().await;
    let report = run(&app, vec![FIXTURES.into()], false).await.expect("import");
    assert_eq!(report.files, 9);
    let trades = report.stored["trades"];
    // the current and legacy fixtures hold the same trades, and one is also in the WebSocket logs at ms precision
    assert_eq!((trades.inserted, trades.skipped), (7, 6), "{report:?}");
    assert_eq!(report.stored["orderbook_deltas"].inserted, 3);
    assert_eq!(report.stored["orderbook_snapshots"].inserted, 1);
    assert_eq!(report.stored["settlements"].inserted, 3);
    assert_eq!(report.ignored.get("ticker"), Some(&2), "{:?}", report.ignored);
    assert_eq!(report.bad, 0);

    // values exactly as Kalshi wrote them: "0.2900" dollars, "12.34" contracts, microsecond times
    let request = StreamTradesRequest {
        market_tickers: vec!["KXBTCD-25NOV2517-T99999.99".into()],
        start_time: Some(Timestamp { seconds: 1_764_028_800, nanos: 0 }),
        end_time: Some(Timestamp { seconds: 1_764_115_200, nanos: 0 }),
        ..Default::default()
    };
    let stream = ReplayServiceClient::new(channel.clone()).stream_trades(request).await.expect("trades").into_inner();
    let trades: Vec<_> = common::collect(stream)
        .await
        .expect("messages")
        .into_iter()
        .filter_map(|m| match m.payload {
            Some(stream_trades_response::Payload::Trades(batch)) => Some(batch.trades),
            _ => None,
        })
        .flatten()
        .collect();
    let got: Vec<(&str, i64, i64, i64, i32)> = trades
        .iter()
        .map(|t| {
            let time = t.time.as_ref().expect("time");
            (t.trade_id.as_str(), time.nanos as i64 / 1000, t.yes_price_micros, t.count_centi, t.taker_side)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("6c1e7d52-3f0b-4d8e-9a41-2b5f0c9d7e11", 123_456, 290_000, 1234, 1),
            ("a8e4c0d1-52b7-4f3e-8c19-7d0b6e2f4a53", 250, 425_000, 250, 2)
        ],
        "REST's microseconds kept, the WebSocket's copy at ms skipped"
    );
    let mut reference = ReferenceServiceClient::new(channel.clone());
    let market = reference
        .get_market(GetMarketRequest { ticker: "KXBTCD-25NOV2517-T99999.99".into() })
        .await
        .expect("market")
        .into_inner()
        .market
        .expect("market");
    assert_eq!((market.series_ticker.as_str(), market.floor_strike.as_str()), ("KXBTCD", "99999.99"));
    assert_eq!(market.status, MarketStatus::Active as i32);
    let settlement = reference
        .get_settlement(GetSettlementRequest { market_ticker: "KXCPIYOY-25OCT-SCALAR".into() })
        .await
        .expect("settlement")
        .into_inner()
        .settlement
        .expect("settlement");
    assert_eq!((settlement.result, settlement.settlement_value_micros), (SettlementResult::Scalar as i32, 650_000));
    let book: Vec<(i64, i64, i64)> = db
        .query("SELECT sid, seq, delta_centi FROM orderbook_deltas ORDER BY ts, sid, seq", &[])
        .await
        .expect("deltas")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(book.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(), [(1, 2), (1, 3), (1, 4)], "sid and seq kept");
    assert_eq!(book[0].2, -2000, "\"-20.00\" contracts");

    // the same import again adds nothing
    let stored = dump(&db).await;
    let watermark =
        || async { db.query_one("SELECT watermark FROM data_version", &[]).await.expect("w").get::<_, i64>(0) };
    let before = watermark().await;
    let again = run(&app, vec![FIXTURES.into()], false).await.expect("again");
    assert!(again.stored.values().all(|s| s.inserted == 0 && s.updated == 0), "{again:?}");
    assert_eq!(again.rows(), report.rows());
    assert_eq!((dump(&db).await, watermark().await), (stored.clone(), before));

    // the same files compressed and in subdirectories, into another database: the same rows
    let other = TestApp::start().await;
    let dir = compressed_fixtures();
    let compressed = run(&other, vec![dir.path().to_owned()], false).await.expect("compressed");
    assert_eq!(compressed.files, 9, "the hidden file is skipped");
    assert_eq!(dump(&other.db.client().await).await, stored);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn trade_line(id: &str, price: &str) -> String {
    format!(
        r#"{{"received_at":"2025-11-25T14:03:07.300Z","type":"trade","sid":2,"msg":{{"trade_id":"{id}","market_ticker":"KX-A","yes_price_dollars":"{price}","count_fp":"1.00","taker_side":"yes","ts_ms":1764079387123}}}}"#
    )
}

async fn trade_ids(db: &PgClient) -> Vec<String> {
    db.query("SELECT trade_id FROM trades ORDER BY 1", &[]).await.expect("ids").iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_bad_line_stops_the_import_at_its_file_and_line_or_is_skipped_and_counted() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.jsonl", &format!("{}\n\n{}\n", trade_line("a1", "0.29"), trade_line("a2", "0.30")));
    let b = format!(
        "{}\n{}\n{}\n{}\n",
        trade_line("b1", "0.29"),
        r#"{"type":"trade","sid":2,"msg":{"#,
        trade_line("b3", "1.0000"),
        trade_line("b4", "0.2900001"),
    );
    let b_path = write(dir.path(), "b.jsonl", &b);

    let error = run(&app, vec![dir.path().to_owned()], false).await.expect_err("stops");
    let Error::Import { at, reason } = &error else { panic!("{error}") };
    assert_eq!(at, &format!("{}:2", b_path.display()), "{error}");
    assert!(!reason.is_empty());
    assert_eq!(trade_ids(&db).await, ["a1", "a2"], "a.jsonl committed, nothing of b.jsonl");

    // the line with a price out of range names the field, after its file and line
    let c_path = write(dir.path(), "c.jsonl", &format!("{}\n", trade_line("c1", "1.0000")));
    let error = run(&app, vec![c_path.clone()], false).await.expect_err("out of range").to_string();
    assert!(
        error.starts_with(&format!("{}:1: trade.yes_price_micros: must be between 1 and 999999", c_path.display())),
        "{error}"
    );
    // a price with more decimals than Kalshi's 6 is never rounded
    let d_path = write(dir.path(), "d.jsonl", &format!("{}\n", trade_line("d1", "0.2900001")));
    let error = run(&app, vec![d_path.clone()], false).await.expect_err("too precise").to_string();
    assert!(error.starts_with(&format!("{}:1: ", d_path.display())) && error.contains("0.2900001"), "{error}");

    // --skip-bad: the three bad lines of b.jsonl are counted, the rest is stored
    let report = run(&app, vec![b_path], true).await.expect("skips");
    assert_eq!((report.bad, report.stored["trades"].inserted), (3, 1), "{report:?}");
    assert_eq!(trade_ids(&db).await, ["a1", "a2", "b1"]);

    // a damaged compressed file is an error, not a short import
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("{}\n", trade_line("e1", "0.5")).repeat(100).as_bytes()).expect("gzip");
    let mut bytes = gz.finish().expect("gzip");
    bytes.truncate(bytes.len() / 2);
    let e_path = dir.path().join("e.jsonl.gz");
    std::fs::write(&e_path, bytes).expect("write");
    let error = run(&app, vec![e_path], true).await.expect_err("damaged");
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert_eq!(trade_ids(&db).await, ["a1", "a2", "b1"], "nothing of the damaged file");
}

#[tokio::test]
async fn the_import_command_reports_what_it_stored_and_fails_on_a_bad_line() {
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "ws.jsonl", &format!("{}\nnot json\n", trade_line("x1", "0.29")));
    let command = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kalshi-replay"));
        command.arg("import").args(extra).arg(&path).env("DATABASE_URL", common::url_of(&app.db.config));
        command.output().expect("run")
    };
    let failed = command(&[]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(stderr.contains(&format!("error: {}:2: ", path.display())), "{stderr}");
    let done = command(&["--skip-bad", "--progress", "log"]);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(stdout.contains("trades: 1 inserted"), "{stdout}");
    assert!(stdout.contains("skipped as bad: 1"), "{stdout}");
    let log = String::from_utf8_lossy(&done.stderr);
    assert!(log.contains(&format!("skipped {}:2", path.display())), "{log}");
    assert!(log.contains("import: ") && log.contains(" rows, "), "a progress line in log mode: {log}");
}

async fn run_within(app: &TestApp, paths: Vec<PathBuf>, skip_bad: bool, limits: Limits) -> Result<Report, Error> {
    let pool = app.db.database().pool(2, TIMEOUT).await.expect("pool");
    import::run(&pool, &Options { paths, skip_bad, progress: ProgressMode::Off, limits }).await
}

/// A line past max_import_line_bytes, a file decompressing past max_import_file_bytes, and a file of more items
/// than max_rows_per_write each stop the import at the file and line, naming the limit, `--skip-bad` or not, and
/// store nothing of that file.
#[tokio::test]
async fn an_overlong_line_or_an_oversized_file_stops_the_import_naming_the_limit() {
    let app = TestApp::start().await;
    let db = app.db.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let line = trade_line("a1", "0.29");
    let limits = Limits { max_import_line_bytes: line.len(), ..Limits::default() };
    // at the limit: stored
    let fits = write(dir.path(), "fits.jsonl", &format!("{line}\n"));
    run_within(&app, vec![fits], false, limits.clone()).await.expect("a line at the limit");
    assert_eq!(trade_ids(&db).await, ["a1"]);

    let long = format!("{}\n{} \n", trade_line("b1", "0.29"), trade_line("b2", "0.29"));
    let long_path = write(dir.path(), "long.jsonl", &long);
    for skip_bad in [false, true] {
        let error = run_within(&app, vec![long_path.clone()], skip_bad, limits.clone()).await.expect_err("too long");
        let Error::TooLarge { field, reason } = &error else { panic!("{error}") };
        assert_eq!(field, &format!("{}:2", long_path.display()));
        assert!(reason.contains(&format!("longer than {} bytes (max_import_line_bytes)", line.len())), "{reason}");
    }
    assert_eq!(trade_ids(&db).await, ["a1"], "nothing of the file with the long line");

    // a gzip bomb in miniature: 2000 lines in a few kilobytes, read no further than the limit
    let z = |i: u32| trade_line(&format!("z{i:04}"), "0.29");
    let lines: String = (0..2000).map(|i| format!("{}\n", z(i))).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(lines.as_bytes()).expect("gzip");
    let bomb = dir.path().join("bomb.jsonl.gz");
    std::fs::write(&bomb, gz.finish().expect("gzip")).expect("write");
    let max_file = 100 * (z(0).len() as u64 + 1);
    let limits = Limits { max_import_file_bytes: max_file, ..Limits::default() };
    let error = run_within(&app, vec![bomb.clone()], true, limits).await.expect_err("too large");
    let Error::TooLarge { field, reason } = &error else { panic!("{error}") };
    assert_eq!(field, &format!("{}:101", bomb.display()), "the first line past the limit");
    assert!(reason.contains(&format!("more than {max_file} bytes (max_import_file_bytes)")), "{reason}");
    assert_eq!(trade_ids(&db).await, ["a1"], "nothing of the oversized file");

    // more items than one write may hold: not a bad item that --skip-bad could skip
    let limits = Limits { max_rows_per_write: 1000, ..Limits::default() };
    let error = run_within(&app, vec![bomb.clone()], true, limits).await.expect_err("too many rows");
    let Error::TooLarge { field, reason } = &error else { panic!("{error}") };
    assert_eq!(field, &format!("{}:1001", bomb.display()));
    assert!(reason.contains("at most 1000 items (max_rows_per_write)"), "{reason}");
    assert_eq!(trade_ids(&db).await, ["a1"], "nothing of the file with too many rows");
}
