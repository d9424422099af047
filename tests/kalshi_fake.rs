//! The fake Kalshi REST server of the collector's tests (tests/common/kalshi_fake.rs): paging yields every generated
//! item exactly once on the right side of the cutoff, filters and errors answer as Kalshi's do, and faults come on
//! schedule.

mod common;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use common::{
    TIMEOUT,
    kalshi_fake::{Faults, KalshiData, KalshiFake},
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// An answer of the fake.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

/// GET `path` (with its query) under the fake's base URL, over a fresh HTTP/1.1 connection.
async fn get(fake: &KalshiFake, path: &str) -> Answer {
    let url = format!("{}{path}", fake.base_url);
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, target) = rest.split_at(rest.find('/').expect("a path"));
    let exchange = async {
        let mut stream = TcpStream::connect(host).await?;
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange).await.expect("in time").expect("HTTP exchange");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: body {body:?}: {e}"));
    Answer { status, headers, body }
}

/// Every item of a list, page by page; `path` ends with its query, to which the cursor is appended.
async fn all_pages(fake: &KalshiFake, path: &str, field: &str) -> Vec<Value> {
    let (mut items, mut cursor) = (Vec::new(), String::new());
    loop {
        let answer = get(fake, &format!("{path}&cursor={cursor}")).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        items.extend(answer.body[field].as_array().expect("a list").iter().cloned());
        cursor = answer.body["cursor"].as_str().expect("a cursor").to_owned();
        if cursor.is_empty() {
            return items;
        }
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("{key} in {value}"))
}

fn time(value: &Value, key: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text(value, key)).expect("RFC 3339").with_timezone(&Utc)
}

fn data() -> KalshiData {
    let start = DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z").expect("start").with_timezone(&Utc);
    KalshiData::generate(7, 2, 3, 4, 40, start, 4)
}

#[tokio::test]
async fn trades_page_exactly_once_on_each_side_of_the_cutoff() {
    let fake = KalshiFake::start(data(), Faults::default()).await;
    let data = fake.data();
    let cutoff = data.cutoff.trades_created_ts;
    let (mut live, mut historical) = (0, 0);
    for market in &data.markets {
        let ticker = text(market, "ticker");
        let generated: Vec<&Value> = data.trades.iter().filter(|t| text(t, "ticker") == ticker).collect();
        let mut served = Vec::new();
        for (endpoint, is_live) in [("/markets/trades", true), ("/historical/trades", false)] {
            let page = all_pages(&fake, &format!("{endpoint}?ticker={ticker}&limit=7"), "trades").await;
            for pair in page.windows(2) {
                let key = |t: &Value| (time(t, "created_time"), text(t, "trade_id").to_owned());
                assert!(key(&pair[0]) > key(&pair[1]), "newest first, ties by trade_id: {pair:?}");
            }
            assert!(page.iter().all(|t| (time(t, "created_time") >= cutoff) == is_live), "{endpoint} of {ticker}");
            *(if is_live { &mut live } else { &mut historical }) += page.len();
            served.extend(page);
        }
        let ids: HashSet<&str> = served.iter().map(|t| text(t, "trade_id")).collect();
        assert_eq!((ids.len(), served.len()), (generated.len(), generated.len()), "{ticker}: each trade once");
        assert!(generated.iter().all(|t| served.contains(t)), "{ticker}: the generated trades, unchanged");
    }
    assert!(live > 0 && historical > 0, "trades on both sides of the cutoff: {live} live, {historical} historical");
    assert_eq!(live + historical, data.trades.len());
    assert!(data.markets.iter().any(|m| text(m, "volume_fp") == "0.00"), "some markets never traded");
    for t in &data.trades {
        let side = text(t, "taker_side");
        assert_eq!(side, text(t, "taker_outcome_side"));
        assert_eq!(text(t, "taker_book_side"), if side == "yes" { "bid" } else { "ask" });
    }
}

#[tokio::test]
async fn markets_page_exactly_once_live_or_historical() {
    let fake = KalshiFake::start(data(), Faults::default()).await;
    let data = fake.data();
    let live = all_pages(&fake, "/markets?limit=5", "markets").await;
    let historical = all_pages(&fake, "/historical/markets?limit=5", "markets").await;
    assert!(!live.is_empty() && !historical.is_empty(), "{} live, {} historical", live.len(), historical.len());
    for market in &historical {
        assert!(time(market, "settlement_ts") < data.cutoff.market_settled_ts, "{market}");
    }
    let mut tickers: Vec<&str> = live.iter().chain(&historical).map(|m| text(m, "ticker")).collect();
    tickers.sort_unstable();
    let mut generated: Vec<&str> = data.markets.iter().map(|m| text(m, "ticker")).collect();
    generated.sort_unstable();
    assert_eq!(tickers, generated);
    // nested markets are the live ones too
    let events = all_pages(&fake, "/events?limit=2&with_nested_markets=true", "events").await;
    assert_eq!(events.len(), data.events.len());
    let nested: usize = events.iter().map(|e| e["markets"].as_array().expect("nested markets").len()).sum();
    assert_eq!(nested, live.len());
}

#[tokio::test]
async fn filters_and_errors_answer_as_kalshi() {
    let fake = KalshiFake::start(data(), Faults::default()).await;
    let data = fake.data();
    // min_ts and max_ts are both inclusive, in whole seconds
    let trade = &data.trades[data.trades.len() / 2];
    let second = time(trade, "created_time").timestamp();
    let endpoint = if time(trade, "created_time") >= data.cutoff.trades_created_ts { "markets" } else { "historical" };
    let query = format!("/{endpoint}/trades?ticker={}&min_ts={second}&max_ts={second}", text(trade, "ticker"));
    let found = get(&fake, &query).await.body["trades"].as_array().expect("trades").clone();
    assert!(found.contains(trade), "{query}: {found:?}");
    let cutoff = get(&fake, "/historical/cutoff").await.body;
    assert_eq!(time(&cutoff, "trades_created_ts"), data.cutoff.trades_created_ts);
    let ticker = text(&data.series[1], "ticker");
    assert_eq!(get(&fake, &format!("/series/{ticker}")).await.body["series"], data.series[1]);
    let refused = [
        ("/markets/trades?limit=1001", 400),
        ("/events?limit=201", 400),
        ("/markets?cursor=nonsense", 400),
        ("/series/KXNONE", 404),
        ("/markets/KXNONE-26JAN05-T40", 404),
        ("/no/such/endpoint", 404),
    ];
    for (path, status) in refused {
        let answer = get(&fake, path).await;
        assert_eq!(answer.status, status, "{path}");
        assert!(answer.body["message"].is_string(), "{path}: {}", answer.body);
    }
    // tickers is a comma-separated list, its commas percent-encoded or not
    let two: Vec<String> = get(&fake, "/markets?limit=2").await.body["markets"]
        .as_array()
        .expect("markets")
        .iter()
        .map(|m| text(m, "ticker").to_owned())
        .collect();
    for separator in [",", "%2C"] {
        let found = get(&fake, &format!("/markets?tickers={}", two.join(separator))).await.body;
        let tickers: Vec<&str> =
            found["markets"].as_array().expect("markets").iter().map(|m| text(m, "ticker")).collect();
        assert_eq!(tickers, two, "{separator}");
    }
    // a cursor belongs to its list
    let cursor = get(&fake, "/markets?limit=1").await.body["cursor"].as_str().expect("cursor").to_owned();
    assert_eq!(get(&fake, &format!("/historical/markets?cursor={cursor}")).await.status, 400);
}

#[tokio::test]
async fn faults_come_on_schedule() {
    let faults =
        Faults { too_many_every: Some(3), retry_after_seconds: 2, server_error_every: Some(5), ..Faults::default() };
    let fake = KalshiFake::start(data(), faults).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = get(&fake, "/historical/cutoff").await;
        match answer.status {
            429 => assert_eq!(answer.headers.get("retry-after").map(String::as_str), Some("2")),
            500 => assert!(answer.body["message"].is_string(), "{}", answer.body),
            _ => assert!(answer.body["trades_created_ts"].is_string(), "{}", answer.body),
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200, 200, 429, 200, 500, 429]);
    get(&fake, "/series").await;
    assert_eq!((fake.requests(), fake.requests_to("/historical/cutoff"), fake.requests_to("/series")), (7, 6, 1));
}
