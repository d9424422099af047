//! A fake of Kalshi's REST API (Trade API v2, spec 3.13) for the collector's tests: generated series, events,
//! markets and trades, deterministic from a seed, split into live and historical by a cutoff as Kalshi does, served
//! on 127.0.0.1 with Kalshi's JSON shapes, pagination and errors, and with 429s and 500s injected on schedule.
//!
//! Shapes: prices are `*_dollars` strings ("0.4200"), counts `*_fp` strings ("3.00"), times RFC 3339 strings.
//! Trades carry the deprecated `taker_side` and its successors `taker_outcome_side` (yes | no) and `taker_book_side`
//! (bid = yes, ask = no), always consistent, and `is_block_trade`.
//!
//! Lists: `limit` from 1 to 1000 for markets and trades (0 or absent: 100), 1 to 200 for events (absent: 200);
//! else 400. The cursor is opaque (URL-safe base64 of the endpoint and an offset into the filtered list), "" after
//! the last page; a cursor that does not decode, belongs to another endpoint or points past the end is a 400.
//! Trades come newest first (created_time descending, ties by trade_id descending); `min_ts` and `max_ts` are unix
//! seconds, both inclusive: a trade at 10.5 s is in [10, 10]. Other lists keep the generated order.
//!
//! Candlesticks (`/series/{s}/markets/{t}/candlesticks` for markets not archived, `/historical/markets/{t}/
//! candlesticks` for archived ones, each a 404 for the other kind) are computed from the market's trades
//! ([`KalshiData::candles`]): one candle per period with trades, and one without trades (null prices) after each
//! such period that the next trade does not fall in. `period_interval` must be 1, 60 or 1440, `start_ts` and
//! `end_ts` are required, both inclusive on the candles' `end_period_ts`, and may span at most 5,000 periods;
//! else 400.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{StatusCode, Uri, header::RETRY_AFTER},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot};

/// The path of the API on the server, as on Kalshi's.
pub const BASE_PATH: &str = "/trade-api/v2";

const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 60 * MINUTE_US;
const DAY_US: i64 = 24 * HOUR_US;

/// Generated Kalshi data: deterministic from a seed.
#[derive(Debug, Clone)]
pub struct KalshiData {
    /// `Series` objects.
    pub series: Vec<Value>,
    /// `EventData` objects, without nested markets.
    pub events: Vec<Value>,
    /// `Market` objects, in series, event, strike order.
    pub markets: Vec<Value>,
    /// `Trade` objects, market by market, each market's oldest first.
    pub trades: Vec<Value>,
    pub cutoff: Cutoff,
}

/// Kalshi's historical cutoff (`GET /historical/cutoff`).
#[derive(Debug, Clone, Copy)]
pub struct Cutoff {
    /// Trades created before it are only in `/historical/trades`, the others only in `/markets/trades`.
    pub trades_created_ts: DateTime<Utc>,
    /// Markets settled before it are only in `/historical/markets` (and not nested in events).
    pub market_settled_ts: DateTime<Utc>,
}

impl KalshiData {
    /// `series` series (tickers "KXFAKEA", "KXFAKEB", ...), each with `events_per_series` events (one a day from
    /// `start`: "KXFAKEA-26JAN05", ...), each with `markets_per_event` strike markets ("{event}-T40", "-T45", ...).
    /// Each market trades over [start, start + days), or until a little before it settles, between 0 and
    /// `max_trades_per_market` times (every fifth market not at all); some trades share a time. A quarter of the
    /// markets settled before `cutoff.market_settled_ts` (archived), a quarter after it, the rest are active.
    /// `cutoff.trades_created_ts` is the middle of the range, `cutoff.market_settled_ts` an eighth of it earlier.
    pub fn generate(
        seed: u64,
        series: usize,
        events_per_series: usize,
        markets_per_event: usize,
        max_trades_per_market: usize,
        start: DateTime<Utc>,
        days: i64,
    ) -> Self {
        assert!(days > 0, "days must be positive");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let at = |us: i64| start + TimeDelta::microseconds(us);
        let span = days * DAY_US;
        let (trades_cut, market_cut) = (span / 2, span / 2 - span / 8);
        let cutoff = Cutoff { trades_created_ts: at(trades_cut), market_settled_ts: at(market_cut) };
        let mut data = KalshiData { series: vec![], events: vec![], markets: vec![], trades: vec![], cutoff };
        let kind_shift = rng.random_range(0..4);
        let mut index = 0usize;
        for s in 0..series {
            let series_ticker = format!("KXFAKE{}", letters(s));
            let series_title = format!("Fake index {}", letters(s));
            let category = ["Economics", "Climate and Weather", "Crypto"][s % 3];
            let fee_type = ["quadratic", "quadratic_with_maker_fees", "flat"][s % 3];
            data.series.push(json!({
                "ticker": series_ticker,
                "frequency": "daily",
                "title": series_title,
                "category": category,
                "tags": ["Fake", category],
                "settlement_sources": [{"name": "Fake source", "url": "https://example.com/fake"}],
                "contract_url": format!("https://example.com/contracts/{series_ticker}.pdf"),
                "contract_terms_url": format!("https://example.com/contracts/{series_ticker}.pdf"),
                "product_metadata": null,
                "fee_type": fee_type,
                "fee_multiplier": 1,
                "additional_prohibitions": [],
                "last_updated_ts": rfc3339(at(-30 * DAY_US)),
            }));
            for e in 0..events_per_series {
                let day = at(e as i64 * DAY_US);
                let event_ticker = format!("{series_ticker}-{}", day.format("%y%b%d").to_string().to_uppercase());
                data.events.push(json!({
                    "event_ticker": event_ticker,
                    "series_ticker": series_ticker,
                    "sub_title": format!("On {}", day.format("%b %-d, %Y")),
                    "title": format!("{series_title} on {}?", day.format("%b %-d, %Y")),
                    "collateral_return_type": "",
                    "mutually_exclusive": false,
                    "category": category,
                    "strike_date": rfc3339(day + TimeDelta::days(1)),
                    "strike_period": null,
                    "available_on_brokers": true,
                    "product_metadata": null,
                    "last_updated_ts": rfc3339(at(-DAY_US)),
                }));
                for m in 0..markets_per_event {
                    let strike = 40 + 5 * m;
                    let settled_us = match (index + kind_shift) % 4 {
                        0 => Some(rng.random_range(span / 8..market_cut)),
                        1 => Some(rng.random_range(market_cut..span)),
                        _ => None,
                    };
                    let market = MarketPlan {
                        ticker: format!("{event_ticker}-T{strike}"),
                        event_ticker: event_ticker.clone(),
                        title: format!("{series_title} above {strike} on {}?", day.format("%b %-d, %Y")),
                        strike,
                        tick: if rng.random_bool(0.25) { 10 } else { 100 },
                        fractional: rng.random_bool(1.0 / 3.0),
                        trades: if index % 5 == 2 { 0 } else { rng.random_range(0..=max_trades_per_market) },
                        trade_until: settled_us.map_or(span, |s| s - 10 * MINUTE_US),
                        settled: settled_us.map(at),
                    };
                    market.generate(&mut rng, start, days, &mut data);
                    index += 1;
                }
            }
        }
        data
    }
}

/// One market to generate.
struct MarketPlan {
    ticker: String,
    event_ticker: String,
    title: String,
    strike: usize,
    /// Price step in hundredths of a cent (100: cents, 10: tenths of a cent).
    tick: i64,
    fractional: bool,
    trades: usize,
    /// Microseconds from the start before which its trades are.
    trade_until: i64,
    settled: Option<DateTime<Utc>>,
}

impl MarketPlan {
    /// Pushes the market and its trades.
    fn generate(self, rng: &mut ChaCha8Rng, start: DateTime<Utc>, days: i64, data: &mut KalshiData) {
        let at = |us: i64| start + TimeDelta::microseconds(us);
        let mut times: Vec<i64> = (0..self.trades).map(|_| rng.random_range(0..self.trade_until)).collect();
        times.sort_unstable();
        for i in 1..times.len() {
            if rng.random_bool(0.15) {
                times[i] = times[i - 1]; // one taker order filled against several makers
            }
        }
        let tick = self.tick;
        let (mut price, mut volume, mut volume_24h) = (rng.random_range(10..=90) * 100, 0, 0);
        for us in times {
            price = (price + rng.random_range(-3..=3) * tick).clamp(tick, 10_000 - tick);
            let count = if self.fractional { rng.random_range(1..=2_000) } else { rng.random_range(1..=200) * 100 };
            volume += count;
            if us >= days * DAY_US - DAY_US {
                volume_24h += count;
            }
            let yes = rng.random_bool(0.5);
            data.trades.push(json!({
                "trade_id": uuid(rng),
                "ticker": self.ticker,
                "count_fp": count_fp(count),
                "yes_price_dollars": dollars(price),
                "no_price_dollars": dollars(10_000 - price),
                "taker_side": if yes { "yes" } else { "no" },
                "taker_outcome_side": if yes { "yes" } else { "no" },
                "taker_book_side": if yes { "bid" } else { "ask" },
                "is_block_trade": false,
                "created_time": rfc3339(at(us)),
            }));
        }
        let last = if volume > 0 { price } else { 0 };
        let (bid, ask) = match self.settled {
            Some(_) => (0, 0),
            None => ((price - tick).max(tick), (price + tick).min(10_000 - tick)),
        };
        let close = self.settled.map_or(at(days * DAY_US) + TimeDelta::days(7), |t| t - TimeDelta::minutes(5));
        let (structure, step) = if tick == 10 { ("deci_cent", 10) } else { ("linear_cent", 100) };
        let mut market = json!({
            "ticker": self.ticker,
            "event_ticker": self.event_ticker,
            "market_type": "binary",
            "title": self.title,
            "yes_sub_title": format!("Above {}", self.strike),
            "no_sub_title": format!("Above {}", self.strike),
            "created_time": rfc3339(at(-6 * HOUR_US)),
            "updated_time": rfc3339(self.settled.unwrap_or(start)),
            "open_time": rfc3339(start),
            "close_time": rfc3339(close),
            "expected_expiration_time": rfc3339(close + TimeDelta::minutes(5)),
            "latest_expiration_time": rfc3339(close + TimeDelta::days(7)),
            "settlement_timer_seconds": 60,
            "status": if self.settled.is_some() { "finalized" } else { "active" },
        });
        // two objects: one is too deep for json!'s recursion limit
        let prices = json!({
            "notional_value_dollars": "1.0000",
            "yes_bid_dollars": dollars(bid),
            "yes_bid_size_fp": count_fp(if bid > 0 { 10_000 } else { 0 }),
            "yes_ask_dollars": dollars(ask),
            "yes_ask_size_fp": count_fp(if ask > 0 { 5_000 } else { 0 }),
            "no_bid_dollars": dollars(if ask > 0 { 10_000 - ask } else { 0 }),
            "no_ask_dollars": dollars(if bid > 0 { 10_000 - bid } else { 0 }),
            "last_price_dollars": dollars(last),
            "previous_yes_bid_dollars": dollars(bid),
            "previous_yes_ask_dollars": dollars(ask),
            "previous_price_dollars": dollars(last),
        });
        let rest = json!({
            "volume_fp": count_fp(volume),
            "volume_24h_fp": count_fp(if self.settled.is_some() { 0 } else { volume_24h }),
            "liquidity_dollars": "0.0000",
            "open_interest_fp": count_fp(volume / 3),
            "result": "",
            "can_close_early": false,
            "fractional_trading_enabled": self.fractional,
            "expiration_value": "",
            "strike_type": "greater",
            "floor_strike": self.strike,
            "rules_primary": format!("If the fake index is above {} that day, the market resolves Yes.", self.strike),
            "rules_secondary": "",
            "price_level_structure": structure,
            "price_ranges": [{"start": dollars(step), "end": dollars(10_000 - step), "step": dollars(step)}],
        });
        let fields = market.as_object_mut().expect("object");
        for part in [prices, rest] {
            let Value::Object(part) = part else { unreachable!("an object") };
            fields.extend(part);
        }
        if let Some(settled) = self.settled {
            let yes = if volume > 0 { price >= 5_000 } else { rng.random_bool(0.5) };
            let value = if yes { self.strike as f64 + 1.5 } else { self.strike as f64 - 2.5 };
            fields.insert("result".into(), json!(if yes { "yes" } else { "no" }));
            fields.insert("expiration_value".into(), json!(format!("{value:.1}")));
            fields.insert("settlement_value_dollars".into(), json!(dollars(if yes { 10_000 } else { 0 })));
            fields.insert("settlement_ts".into(), json!(rfc3339(settled)));
        }
        data.markets.push(market);
    }
}

/// A, B, ..., Z, AA, AB, ...
fn letters(mut n: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'A' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII")
}

/// A random version-4 UUID, as Kalshi's trade ids.
fn uuid(rng: &mut ChaCha8Rng) -> String {
    let n = (rng.random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Hundredths of a cent as FixedPointDollars ("0.4200").
fn dollars(units: i64) -> String {
    format!("{}.{:04}", units / 10_000, units % 10_000)
}

/// Hundredths of a contract as FixedPointCount ("3.00").
fn count_fp(hundredths: i64) -> String {
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Faults injected by request number (counting every request the server gets, 1-based); a 429 wins over a 500.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every n-th request is a 429 with `Retry-After: {retry_after_seconds}`.
    pub too_many_every: Option<u64>,
    pub retry_after_seconds: u64,
    /// Every n-th request is a 500.
    pub server_error_every: Option<u64>,
    /// Every n-th request (not already a 429 or a 500) is answered only after `stall`: a Kalshi that accepts the
    /// request and then keeps the client waiting.
    pub stall_every: Option<u64>,
    pub stall: std::time::Duration,
}

/// The fake server on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct KalshiFake {
    /// E.g. "http://127.0.0.1:PORT/trade-api/v2", without a trailing slash.
    pub base_url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl KalshiFake {
    /// Serves `data` on a port of its own, in a task of the current runtime.
    pub async fn start(data: KalshiData, faults: Faults) -> Self {
        let shared = Arc::new(Shared {
            index: Index::new(&data),
            data,
            faults,
            requests: AtomicU64::new(0),
            by_path: Mutex::new(BTreeMap::new()),
        });
        let api = Router::new()
            .route("/historical/cutoff", get(cutoff))
            .route("/historical/markets", get(historical_markets))
            .route("/historical/markets/{ticker}", get(historical_market))
            .route("/historical/markets/{ticker}/candlesticks", get(historical_candles))
            .route("/series/{series_ticker}/markets/{ticker}/candlesticks", get(live_candles))
            .route("/historical/trades", get(historical_trades))
            .route("/series", get(series_list))
            .route("/series/{series_ticker}", get(series_one))
            .route("/events", get(events_list))
            .route("/events/{event_ticker}", get(event_one))
            .route("/markets", get(live_markets))
            .route("/markets/trades", get(live_trades))
            .route("/markets/{ticker}", get(live_market))
            .with_state(shared.clone());
        let app = Router::new()
            .nest(BASE_PATH, api)
            .fallback(|uri: Uri| async move { not_found("endpoint", uri.path()) })
            .layer(middleware::from_fn_with_state(shared.clone(), count_and_fault));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Kalshi");
        let base_url = format!("http://{}{BASE_PATH}", listener.local_addr().expect("local address"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("the fake Kalshi");
        });
        Self { base_url, shared, stop: Some(stop) }
    }

    /// Requests received so far, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests received so far whose path starts with `path_prefix`, relative to the API ("/markets/trades") or
    /// not ("/trade-api/v2/markets/trades"); "/markets" also counts "/markets/trades" and "/markets/{ticker}".
    pub fn requests_to(&self, path_prefix: &str) -> u64 {
        let prefix = path_prefix.strip_prefix(BASE_PATH).unwrap_or(path_prefix);
        let by_path = self.shared.by_path.lock().expect("request counts");
        by_path.iter().filter(|(path, _)| path.starts_with(prefix)).map(|(_, n)| n).sum()
    }

    /// Requests received so far to Kalshi's candlesticks endpoints (paths ending in `/candlesticks`).
    pub fn candle_requests(&self) -> u64 {
        let by_path = self.shared.by_path.lock().expect("request counts");
        by_path.iter().filter(|(path, _)| path.ends_with("/candlesticks")).map(|(_, n)| n).sum()
    }

    pub fn data(&self) -> &KalshiData {
        &self.shared.data
    }
}

impl Drop for KalshiFake {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Debug)]
struct Shared {
    data: KalshiData,
    index: Index,
    faults: Faults,
    requests: AtomicU64,
    /// Requests by path, relative to [`BASE_PATH`] when under it.
    by_path: Mutex<BTreeMap<String, u64>>,
}

/// What the handlers filter on, read from the data's JSON (so that a test may edit the data before `start`).
#[derive(Debug)]
struct Index {
    /// Per market of `data.markets`, in order.
    markets: Vec<MarketKey>,
    /// Per event of `data.events`: its series and its markets (indices into `markets`).
    events: Vec<(String, Vec<usize>)>,
    /// Indices into `data.trades`, newest first, split by the cutoff.
    live_trades: Vec<TradeKey>,
    historical_trades: Vec<TradeKey>,
}

#[derive(Debug)]
struct MarketKey {
    ticker: String,
    event: String,
    series: String,
    status: String,
    /// Settled before the cutoff: only in /historical/markets.
    archived: bool,
}

#[derive(Debug)]
struct TradeKey {
    at: DateTime<Utc>,
    id: String,
    ticker: String,
    i: usize,
}

impl Index {
    fn new(data: &KalshiData) -> Self {
        let series_of: HashMap<&str, &str> =
            data.events.iter().map(|e| (text(e, "event_ticker"), text(e, "series_ticker"))).collect();
        let markets: Vec<MarketKey> = data
            .markets
            .iter()
            .map(|m| {
                let event = text(m, "event_ticker");
                let settled = m.get("settlement_ts").and_then(Value::as_str).map(time);
                MarketKey {
                    ticker: text(m, "ticker").to_owned(),
                    event: event.to_owned(),
                    series: series_of.get(event).copied().unwrap_or(event.split('-').next().unwrap_or("")).to_owned(),
                    status: text(m, "status").to_owned(),
                    archived: settled.is_some_and(|t| t < data.cutoff.market_settled_ts),
                }
            })
            .collect();
        let events = data
            .events
            .iter()
            .map(|e| {
                let ticker = text(e, "event_ticker");
                let own = (0..markets.len()).filter(|&i| markets[i].event == ticker).collect();
                (text(e, "series_ticker").to_owned(), own)
            })
            .collect();
        let (mut live_trades, mut historical_trades): (Vec<_>, Vec<_>) = data
            .trades
            .iter()
            .enumerate()
            .map(|(i, t)| TradeKey {
                at: time(text(t, "created_time")),
                id: text(t, "trade_id").to_owned(),
                ticker: text(t, "ticker").to_owned(),
                i,
            })
            .partition(|t| t.at >= data.cutoff.trades_created_ts);
        for trades in [&mut live_trades, &mut historical_trades] {
            trades.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
        }
        Self { markets, events, live_trades, historical_trades }
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("time {text:?}: {e}")).with_timezone(&Utc)
}

/// Counts every request and answers the scheduled ones with a fault.
async fn count_and_fault(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let key = path.strip_prefix(BASE_PATH).unwrap_or(path).to_owned();
    *s.by_path.lock().expect("request counts").entry(key).or_default() += 1;
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let due = |every: Option<u64>| every.is_some_and(|every| every > 0 && n % every == 0);
    if due(s.faults.too_many_every) {
        let message = "too many requests".to_owned();
        let mut response =
            Refusal { status: StatusCode::TOO_MANY_REQUESTS, code: "too_many_requests", message }.into_response();
        response.headers_mut().insert(RETRY_AFTER, s.faults.retry_after_seconds.into());
        return response;
    }
    if due(s.faults.server_error_every) {
        let message = format!("request {n} failed");
        return Refusal { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal_server_error", message }
            .into_response();
    }
    if due(s.faults.stall_every) {
        tokio::time::sleep(s.faults.stall).await;
    }
    next.run(request).await
}

type Params = Query<HashMap<String, String>>;
type Reply = Result<Response, Refusal>;

/// An error answer, with Kalshi's `ErrorResponse` body.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "message": self.message, "service": "fake-kalshi"});
        (self.status, Json(body)).into_response()
    }
}

fn bad_request(message: String) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, code: "bad_request", message }
}

fn not_found(what: &str, key: &str) -> Refusal {
    Refusal { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("{what} {key:?} not found") }
}

fn ok(body: Value) -> Reply {
    Ok(Json(body).into_response())
}

/// A query parameter, absent when empty.
fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

fn boolean(q: &HashMap<String, String>, name: &str) -> Result<bool, Refusal> {
    match param(q, name) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(bad_request(format!("{name} {other:?}: expected true or false"))),
    }
}

fn unix_seconds(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Refusal> {
    param(q, name)
        .map(|v| v.parse::<i64>().map_err(|_| bad_request(format!("{name} {v:?}: expected unix seconds"))))
        .transpose()
}

/// How a list endpoint pages.
struct Paging {
    /// Bound into the cursor, so that a cursor of another endpoint is refused.
    endpoint: &'static str,
    default: usize,
    max: usize,
    /// `limit=0` means the default (the spec's `gte=0` with `omitempty`), else it is out of range.
    zero_is_default: bool,
}

const MARKETS: Paging = Paging { endpoint: "markets", default: 100, max: 1000, zero_is_default: true };
const HISTORICAL_MARKETS: Paging = Paging { endpoint: "historical/markets", ..MARKETS };
const TRADES: Paging = Paging { endpoint: "markets/trades", ..MARKETS };
const HISTORICAL_TRADES: Paging = Paging { endpoint: "historical/trades", ..MARKETS };
const EVENTS: Paging = Paging { endpoint: "events", default: 200, max: 200, zero_is_default: false };

impl Paging {
    /// The page of `items` that the query's `limit` and `cursor` ask for, and the next cursor ("" after the last).
    fn page<T: Copy>(&self, items: &[T], q: &HashMap<String, String>) -> Result<(Vec<T>, String), Refusal> {
        let limit = match param(q, "limit").map(|v| (v, v.parse::<usize>())) {
            None => self.default,
            Some((_, Ok(0))) if self.zero_is_default => self.default,
            Some((_, Ok(n))) if (1..=self.max).contains(&n) => n,
            Some((v, _)) => {
                let min = if self.zero_is_default { 0 } else { 1 };
                return Err(bad_request(format!("limit {v:?}: expected an integer from {min} to {}", self.max)));
            }
        };
        let offset = match param(q, "cursor") {
            None => 0,
            Some(cursor) => self
                .decode(cursor)
                .filter(|&offset| offset <= items.len())
                .ok_or_else(|| bad_request(format!("cursor {cursor:?} is not a cursor of this list")))?,
        };
        let end = items.len().min(offset + limit);
        let next = if end < items.len() { self.encode(end) } else { String::new() };
        Ok((items[offset..end].to_vec(), next))
    }

    fn encode(&self, offset: usize) -> String {
        URL_SAFE_NO_PAD.encode(format!("kf1|{}|{offset}", self.endpoint))
    }

    fn decode(&self, cursor: &str) -> Option<usize> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
        text.strip_prefix("kf1|")?.strip_prefix(self.endpoint)?.strip_prefix('|')?.parse().ok()
    }
}

async fn cutoff(State(s): State<Arc<Shared>>) -> Reply {
    let c = s.data.cutoff;
    ok(json!({
        "market_settled_ts": rfc3339(c.market_settled_ts),
        "trades_created_ts": rfc3339(c.trades_created_ts),
        "orders_updated_ts": rfc3339(c.trades_created_ts),
    }))
}

async fn series_list(State(s): State<Arc<Shared>>, Query(q): Params) -> Reply {
    let category = param(&q, "category");
    let series: Vec<&Value> =
        s.data.series.iter().filter(|v| category.is_none_or(|c| text(v, "category") == c)).collect();
    ok(json!({ "series": series }))
}

async fn series_one(State(s): State<Arc<Shared>>, Path(ticker): Path<String>) -> Reply {
    let found = s.data.series.iter().find(|v| text(v, "ticker") == ticker);
    let series = found.ok_or_else(|| not_found("series", &ticker))?;
    ok(json!({ "series": series }))
}

/// An event's status from its markets': open while one is active, settled once all are.
fn event_status_matches(s: &Shared, markets: &[usize], status: &str) -> bool {
    let statuses = || markets.iter().map(|&i| s.index.markets[i].status.as_str());
    match status {
        "open" => statuses().any(|m| market_status_matches("open", m)),
        "settled" => !markets.is_empty() && statuses().all(|m| market_status_matches("settled", m)),
        "closed" => !markets.is_empty() && statuses().all(|m| market_status_matches("closed", m)),
        _ => !markets.is_empty() && statuses().all(|m| market_status_matches("unopened", m)),
    }
}

/// The event's JSON, with its markets that are not archived nested when asked.
fn event_json(s: &Shared, i: usize, nested: bool) -> Value {
    let mut event = s.data.events[i].clone();
    if nested {
        let markets: Vec<&Value> = live_markets_of(s, i).collect();
        event.as_object_mut().expect("event object").insert("markets".into(), json!(markets));
    }
    event
}

fn live_markets_of(s: &Shared, event: usize) -> impl Iterator<Item = &Value> {
    s.index.events[event].1.iter().filter(|&&m| !s.index.markets[m].archived).map(|&m| &s.data.markets[m])
}

async fn events_list(State(s): State<Arc<Shared>>, Query(q): Params) -> Reply {
    let nested = boolean(&q, "with_nested_markets")?;
    let series = param(&q, "series_ticker");
    let status = param(&q, "status");
    if let Some(status) = status.filter(|v| !["unopened", "open", "closed", "settled"].contains(v)) {
        return Err(bad_request(format!("status {status:?}: expected unopened, open, closed or settled")));
    }
    let matching: Vec<usize> = (0..s.data.events.len())
        .filter(|&i| {
            let (event_series, markets) = &s.index.events[i];
            series.is_none_or(|v| v == event_series) && status.is_none_or(|v| event_status_matches(&s, markets, v))
        })
        .collect();
    let (page, cursor) = EVENTS.page(&matching, &q)?;
    let events: Vec<Value> = page.into_iter().map(|i| event_json(&s, i, nested)).collect();
    ok(json!({ "events": events, "cursor": cursor }))
}

async fn event_one(State(s): State<Arc<Shared>>, Path(ticker): Path<String>, Query(q): Params) -> Reply {
    let nested = boolean(&q, "with_nested_markets")?;
    let found = s.data.events.iter().position(|e| text(e, "event_ticker") == ticker);
    let i = found.ok_or_else(|| not_found("event", &ticker))?;
    let markets: Vec<&Value> = live_markets_of(&s, i).collect();
    ok(json!({ "event": event_json(&s, i, nested), "markets": markets }))
}

/// Whether a market's `status` passes a `status` filter of GET /markets (whose names are the legacy ones).
fn market_status_matches(filter: &str, status: &str) -> bool {
    match filter {
        "unopened" => matches!(status, "initialized" | "unopened"),
        "open" => matches!(status, "active" | "open"),
        "paused" => status == "inactive",
        "closed" => status == "closed",
        _ => matches!(status, "determined" | "disputed" | "amended" | "finalized" | "settled"),
    }
}

async fn live_markets(State(s): State<Arc<Shared>>, Query(q): Params) -> Reply {
    markets(&s, &q, false)
}

async fn historical_markets(State(s): State<Arc<Shared>>, Query(q): Params) -> Reply {
    markets(&s, &q, true)
}

fn markets(s: &Shared, q: &HashMap<String, String>, archived: bool) -> Reply {
    let series = param(q, "series_ticker");
    let event = param(q, "event_ticker");
    let tickers: Option<HashSet<&str>> =
        param(q, "tickers").map(|v| v.split(',').map(str::trim).filter(|t| !t.is_empty()).collect());
    // /historical/markets has no status filter
    let status = if archived { None } else { param(q, "status") };
    if let Some(status) = status.filter(|v| !["unopened", "open", "paused", "closed", "settled"].contains(v)) {
        return Err(bad_request(format!("status {status:?}: expected unopened, open, paused, closed or settled")));
    }
    let matching: Vec<usize> = (0..s.index.markets.len())
        .filter(|&i| {
            let m = &s.index.markets[i];
            m.archived == archived
                && series.is_none_or(|v| v == m.series)
                && event.is_none_or(|v| v == m.event)
                && tickers.as_ref().is_none_or(|t| t.contains(m.ticker.as_str()))
                && status.is_none_or(|v| market_status_matches(v, &m.status))
        })
        .collect();
    let (page, cursor) = if archived { HISTORICAL_MARKETS } else { MARKETS }.page(&matching, q)?;
    let markets: Vec<&Value> = page.into_iter().map(|i| &s.data.markets[i]).collect();
    ok(json!({ "markets": markets, "cursor": cursor }))
}

async fn live_market(State(s): State<Arc<Shared>>, Path(ticker): Path<String>) -> Reply {
    market(&s, &ticker, false)
}

async fn historical_market(State(s): State<Arc<Shared>>, Path(ticker): Path<String>) -> Reply {
    market(&s, &ticker, true)
}

/// A market from its side of the cutoff: an archived market is not in /markets/{ticker}, nor a live one in
/// /historical/markets/{ticker}.
fn market(s: &Shared, ticker: &str, archived: bool) -> Reply {
    let i = (0..s.index.markets.len())
        .find(|&i| s.index.markets[i].ticker == ticker && s.index.markets[i].archived == archived)
        .ok_or_else(|| not_found("market", ticker))?;
    ok(json!({ "market": s.data.markets[i] }))
}

async fn live_trades(State(s): State<Arc<Shared>>, Query(q): Params) -> Reply {
    trades(&s, &q, &s.index.live_trades, TRADES)
}

async fn historical_trades(State(s): State<Arc<Shared>>, Query(q): Params) -> Reply {
    trades(&s, &q, &s.index.historical_trades, HISTORICAL_TRADES)
}

fn trades(s: &Shared, q: &HashMap<String, String>, sorted: &[TradeKey], paging: Paging) -> Reply {
    let ticker = param(q, "ticker");
    let min_ts = unix_seconds(q, "min_ts")?;
    let max_ts = unix_seconds(q, "max_ts")?;
    let matching: Vec<usize> = sorted
        .iter()
        .filter(|t| {
            ticker.is_none_or(|v| v == t.ticker)
                && min_ts.is_none_or(|min| t.at.timestamp() >= min)
                && max_ts.is_none_or(|max| t.at.timestamp() <= max)
        })
        .map(|t| t.i)
        .collect();
    let (page, cursor) = paging.page(&matching, q)?;
    let trades: Vec<&Value> = page.into_iter().map(|i| &s.data.trades[i]).collect();
    ok(json!({ "trades": trades, "cursor": cursor }))
}

/// The most periods one candlesticks request may span (Kalshi's documented maximum).
pub const MAX_CANDLES: i64 = 5000;

/// One candle as the fake computes it, in the stored units: micro-dollars and centi-contracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCandle {
    pub ticker: String,
    pub period_minutes: i64,
    /// `end_period_ts`, unix seconds: the candle covers (end - period, end].
    pub end: i64,
    /// open, high, low, close.
    pub yes_bid: [i64; 4],
    pub yes_ask: [i64; 4],
    /// open, high, low, close, mean, previous; None without trades (previous: none before).
    pub price: [Option<i64>; 6],
    pub volume_centi: i64,
    pub open_interest_centi: i64,
}

/// Micro-dollars as a dollars string: 4 decimals where exact (Kalshi's usual), else 6.
fn micros_dollars(micros: i64) -> String {
    if micros % 100 == 0 {
        format!("{}.{:04}", micros / 1_000_000, (micros % 1_000_000) / 100)
    } else {
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    }
}

impl FakeCandle {
    /// The live endpoint's MarketCandlestick.
    fn live_json(&self) -> Value {
        let ohlc = |v: &[i64; 4]| {
            json!({"open_dollars": micros_dollars(v[0]), "high_dollars": micros_dollars(v[1]),
                   "low_dollars": micros_dollars(v[2]), "close_dollars": micros_dollars(v[3])})
        };
        let p = |i: usize| self.price[i].map(micros_dollars);
        json!({
            "end_period_ts": self.end,
            "yes_bid": ohlc(&self.yes_bid),
            "yes_ask": ohlc(&self.yes_ask),
            "price": {"open_dollars": p(0), "high_dollars": p(1), "low_dollars": p(2), "close_dollars": p(3),
                      "mean_dollars": p(4), "previous_dollars": p(5)},
            "volume_fp": count_fp(self.volume_centi),
            "open_interest_fp": count_fp(self.open_interest_centi),
        })
    }

    /// The historical endpoint's MarketCandlestickHistorical.
    fn historical_json(&self) -> Value {
        let ohlc = |v: &[i64; 4]| {
            json!({"open": micros_dollars(v[0]), "high": micros_dollars(v[1]), "low": micros_dollars(v[2]),
                   "close": micros_dollars(v[3])})
        };
        let p = |i: usize| self.price[i].map(micros_dollars);
        json!({
            "end_period_ts": self.end,
            "yes_bid": ohlc(&self.yes_bid),
            "yes_ask": ohlc(&self.yes_ask),
            "price": {"open": p(0), "high": p(1), "low": p(2), "close": p(3), "mean": p(4), "previous": p(5)},
            "volume": count_fp(self.volume_centi),
            "open_interest": count_fp(self.open_interest_centi),
        })
    }
}

impl KalshiData {
    /// Every candle of `ticker` for `period_minutes`, oldest first, computed from its trades (in their generated
    /// order, which is time order): OHLC, volume and the volume-weighted mean (rounded half up to the
    /// micro-dollar) of the period's trades, `previous` the last price before it; the YES bid and ask one cent
    /// below and above the last price before the period and each trade's (clamped to 0 and 1 USD); the open
    /// interest a third of the volume so far. After each period with trades whose next period has none, a candle
    /// of that quiet period (unless it begins after the market's close): null prices, bid and ask around the last
    /// price.
    pub fn candles(&self, ticker: &str, period_minutes: i64) -> Vec<FakeCandle> {
        let step = period_minutes * 60 * 1_000_000;
        let micros = |v: &Value| dollars_micros(v.as_str().unwrap_or("0"));
        let trades: Vec<(i64, i64, i64)> = self
            .trades
            .iter()
            .filter(|t| text(t, "ticker") == ticker)
            .map(|t| {
                let at = time(text(t, "created_time")).timestamp_micros();
                let end = (at + step - 1).div_euclid(step) * step / 1_000_000;
                (end, micros(&t["yes_price_dollars"]), dollars_micros(text(t, "count_fp")) / 10_000)
            })
            .collect();
        // no candle of a period that begins at or after the market's close
        let closes_at = self
            .markets
            .iter()
            .find(|m| text(m, "ticker") == ticker)
            .map_or(i64::MAX, |m| time(text(m, "close_time")).timestamp());
        let quote = |mid: i64, delta: i64| (mid + delta).clamp(0, 1_000_000);
        let ohlc = |series: &[i64]| {
            [
                series[0],
                *series.iter().max().expect("one"),
                *series.iter().min().expect("one"),
                series[series.len() - 1],
            ]
        };
        let mut out = Vec::new();
        let (mut previous, mut volume_so_far) = (None::<i64>, 0i64);
        let mut i = 0;
        while i < trades.len() {
            let end = trades[i].0;
            let group: Vec<(i64, i64, i64)> = trades[i..].iter().take_while(|t| t.0 == end).copied().collect();
            i += group.len();
            let prices: Vec<i64> = group.iter().map(|t| t.1).collect();
            let mut mids = vec![previous.unwrap_or(prices[0])];
            mids.extend(&prices);
            let volume: i64 = group.iter().map(|t| t.2).sum();
            let notional: i64 = group.iter().map(|t| t.1 * t.2).sum();
            volume_so_far += volume;
            let [open, high, low, close] = ohlc(&prices);
            out.push(FakeCandle {
                ticker: ticker.to_owned(),
                period_minutes,
                end,
                yes_bid: ohlc(&mids.iter().map(|m| quote(*m, -10_000)).collect::<Vec<_>>()),
                yes_ask: ohlc(&mids.iter().map(|m| quote(*m, 10_000)).collect::<Vec<_>>()),
                price: [
                    Some(open),
                    Some(high),
                    Some(low),
                    Some(close),
                    Some((2 * notional + volume) / (2 * volume)),
                    previous,
                ],
                volume_centi: volume,
                open_interest_centi: volume_so_far / 3,
            });
            previous = Some(close);
            let quiet = end + period_minutes * 60;
            if trades.get(i).is_none_or(|t| t.0 != quiet) && quiet - period_minutes * 60 < closes_at {
                out.push(FakeCandle {
                    ticker: ticker.to_owned(),
                    period_minutes,
                    end: quiet,
                    yes_bid: [quote(close, -10_000); 4],
                    yes_ask: [quote(close, 10_000); 4],
                    price: [None, None, None, None, None, Some(close)],
                    volume_centi: 0,
                    open_interest_centi: volume_so_far / 3,
                });
            }
        }
        out
    }
}

/// A dollars string as micro-dollars, exactly (the fake's own strings: digits, a dot, up to 6 decimals).
pub fn dollars_micros(text: &str) -> i64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let padded = format!("{fraction:0<6}");
    whole.parse::<i64>().expect("whole") * 1_000_000 + padded[..6].parse::<i64>().expect("fraction")
}

async fn live_candles(
    State(s): State<Arc<Shared>>,
    Path((series, ticker)): Path<(String, String)>,
    Query(q): Params,
) -> Reply {
    let market = s.index.markets.iter().find(|m| m.ticker == ticker && m.series == series && !m.archived);
    market.ok_or_else(|| not_found("market", &ticker))?;
    candlesticks(&s, &ticker, &q, FakeCandle::live_json)
}

async fn historical_candles(State(s): State<Arc<Shared>>, Path(ticker): Path<String>, Query(q): Params) -> Reply {
    s.index.markets.iter().find(|m| m.ticker == ticker && m.archived).ok_or_else(|| not_found("market", &ticker))?;
    candlesticks(&s, &ticker, &q, FakeCandle::historical_json)
}

fn candlesticks(s: &Shared, ticker: &str, q: &HashMap<String, String>, shape: fn(&FakeCandle) -> Value) -> Reply {
    let period = match param(q, "period_interval") {
        Some("1") => 1,
        Some("60") => 60,
        Some("1440") => 1440,
        other => return Err(bad_request(format!("period_interval {other:?}: expected 1, 60 or 1440"))),
    };
    let start = unix_seconds(q, "start_ts")?.ok_or_else(|| bad_request("start_ts is required".into()))?;
    let end = unix_seconds(q, "end_ts")?.ok_or_else(|| bad_request("end_ts is required".into()))?;
    let step = period * 60;
    let periods = end.div_euclid(step) - (start + step - 1).div_euclid(step) + 1;
    if start > end || periods > MAX_CANDLES {
        return Err(bad_request(format!(
            "start_ts {start} to end_ts {end} spans {periods} periods of {period} minutes; at most {MAX_CANDLES}"
        )));
    }
    let candles: Vec<Value> =
        s.data.candles(ticker, period).iter().filter(|c| (start..=end).contains(&c.end)).map(shape).collect();
    ok(json!({ "ticker": ticker, "candlesticks": candles }))
}
