//! Kalshi's own JSON converted into this crate's messages, for the importer: REST pages (trades, markets, events,
//! series, candlesticks, and their /historical twins) and WebSocket log lines (one `{type, sid, seq, msg}` envelope per line
//! with the time it was received).
//!
//! This module converts shapes and units only. It never loses precision and fails loudly on anything it cannot
//! convert exactly; the semantic checks (price range, positive counts, known tickers) are the write core's, after
//! it. Errors name the field as a path (`msg.yes_price_dollars`, `markets[2].status`) so that the importer can
//! prefix `file:line: `.
//!
//! Decisions:
//! - Current and legacy fields: Kalshi's fixed-point `*_dollars` / `*_fp` strings are read first; the legacy
//!   integer cents and contracts (`yes_price`, `count`, `price`, `delta`, `settlement_value`, book levels `yes`/`no`)
//!   are read too, and when both are present they must be equal, else the record is refused (a sub-cent price whose
//!   legacy field was rounded is refused rather than guessed).
//! - Decimal fields take a JSON string or a JSON number; a number is read from its exact text (serde_json's
//!   `arbitrary_precision`), never through f64; an exponent is refused. Legacy fields must be JSON integers, and
//!   a lifecycle event's `settlement_value` must be a string (a bare number there could be legacy cents).
//! - A trade's `no_price` is checked against 1 - yes when present and kept (0 when absent, the write core's
//!   "derived").
//! - Times are microseconds: an RFC3339 time with non-zero digits below the microsecond is refused, not rounded,
//!   as is a leap second. Unix times are integers (seconds, or milliseconds for `ts_ms` and receive times).
//! - Markets carry no `series_ticker` in API v3.13: when absent it is the event ticker up to its first `-`
//!   (`KXBTCD-25NOV2617` -> `KXBTCD`), the whole event ticker when it has none.
//! - A market whose `result` is set also yields a [`Record::Settlement`]. Its value is `settlement_value_dollars`
//!   (or the legacy cents), else 1 USD for yes and 0 for no; scalar and void need the value. The settlement has no
//!   determined time (REST markets do not give one).
//! - Legacy statuses: `unopened` is initialized, `open` active, `settled` finalized.
//! - A page's records come in a fixed order: series, events (each followed by its nested markets), markets,
//!   trades. GetEventResponse's top-level `markets` that repeat the event's nested ones are not repeated (and
//!   must be equal to them). A bare item's kind: `trade_id` is a trade, `ticker` and `event_ticker` a market,
//!   `event_ticker` alone an event, `ticker` alone a series.
//! - WebSocket lines: the receive time is `received_at` (or `recv_ts`, `receive_time`), an RFC3339 string or unix
//!   milliseconds, on the envelope or on a wrapper `{"received_at": .., "message": {envelope}}`; when several are
//!   given they must agree. Snapshots and lifecycle events take it as their time (they carry no exchange time);
//!   deltas take it too when present, so that they share the snapshot's clock, else their `ts`; trades take their
//!   exchange time (`ts_ms`, else `ts`, else `created_time`).
//! - A line that is not an envelope (no `type`) is read as a REST document; other envelope types (`ticker`,
//!   `fill`, `subscribed`, `ok`, `error`, `event_lifecycle`, ...) are [`Record::Ignored`]. A lifecycle
//!   `deactivated` with `is_deactivated: false` is an activation.
//! - Book levels are sorted ascending by price; a price twice on one side is refused.
//! - Candlesticks ([`Record::KalshiCandle`]): a page `{"ticker", "candlesticks": [..]}` of
//!   `/series/{s}/markets/{t}/candlesticks` or `/historical/markets/{t}/candlesticks`, or the multi-market
//!   `{"markets": [{"market_ticker", "candlesticks"}]}` of `/markets/candlesticks`. Kalshi's page does not carry
//!   its period (it is the request's `period_interval`), and guessing it from the spacing of `end_period_ts` fails
//!   for a single candle or one with gaps: the document must say it as a top-level `"period_interval": 1 | 60 |
//!   1440` (the backfill adds it to each page it fetches; a bare page is refused naming `period_interval`). Live
//!   candles name prices `open_dollars` .., counts `volume_fp`, `open_interest_fp`; historical ones `open` .. as
//!   dollar strings and `volume`, `open_interest` as count strings; legacy ones the same bare keys as integer
//!   cents and whole contracts (a string is dollars, an integer cents). Current and bare keys may both be given and
//!   must then agree. `price` fields are null for a period without trades (kept unset, never 0); `min_dollars` and
//!   `max_dollars` (event-level extras) are ignored.

use std::collections::BTreeMap;

use chrono::DateTime;
use prost_types::Timestamp;
use serde_json::{Map, Value};

use crate::decimal::{self, DecimalError};
use crate::proto::{self, LifecycleEventType, MarketStatus, MarketType, SettlementResult, Side};
use crate::time;

/// One micro-dollar amount: 1 USD.
const ONE_DOLLAR: i64 = 1_000_000;
/// The keys of a line's receive time, the primary first.
const RECEIVE_KEYS: [&str; 3] = ["received_at", "recv_ts", "receive_time"];

/// One item found in a Kalshi document or log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A REST Trade or a WebSocket `trade`.
    Trade(proto::Trade),
    /// A WebSocket `orderbook_snapshot`.
    Snapshot(proto::OrderbookSnapshot),
    /// A WebSocket `orderbook_delta`.
    Delta(proto::OrderbookDelta),
    /// A WebSocket `market_lifecycle_v2`.
    Lifecycle(proto::LifecycleEvent),
    /// A REST Series.
    Series(proto::Series),
    /// A REST EventData (its nested markets follow it as their own records).
    Event(proto::Event),
    /// A REST Market.
    Market(proto::Market),
    /// The settlement of a REST Market whose `result` is set; follows its Market.
    Settlement(proto::Settlement),
    /// One of Kalshi's REST candlesticks, with the market and period of its page.
    KalshiCandle(proto::KalshiCandle),
    /// A message kind the service does not store (e.g. WS "ticker", "fill", "subscribed", "ok", "error"): its type.
    Ignored(String),
}

/// A field that could not be converted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParseError {
    /// Where in the document, e.g. `msg.yes_price_dollars` or `trades[3].count_fp`; `json` for a syntax error.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl ParseError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

type Result<T> = std::result::Result<T, ParseError>;

/// Converts a REST document: a page (`trades`, `markets`, `market`, `events`, `event`, `series`; other keys such
/// as `cursor` and `milestones` ignored), a bare array of items, or one item, whose kind is told by its fields.
pub fn parse_document(value: &Value) -> std::result::Result<Vec<Record>, ParseError> {
    let mut out = Vec::new();
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                parse_item(item, format!("[{i}]"), &mut out)?;
            }
        }
        Value::Object(map) if is_candle_page(map) => candle_page(&JsonObject::root(map), &mut out)?,
        Value::Object(map) if is_item(map) => parse_item(value, String::new(), &mut out)?,
        Value::Object(map) => parse_page(map, &mut out)?,
        _ => return Err(ParseError::new("json", "expected a JSON object or array")),
    }
    Ok(out)
}

/// Converts one line of a WebSocket log: an envelope with its receive time, a wrapped envelope, or a REST
/// document on one line. A blank line has no records.
pub fn parse_line(line: &str) -> std::result::Result<Vec<Record>, ParseError> {
    if line.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(line).map_err(|e| ParseError::new("json", e.to_string()))?;
    let Some(map) = value.as_object() else { return parse_document(&value) };
    if map.contains_key("type") {
        let received = receive_time(&[JsonObject::root(map)])?;
        return parse_envelope(JsonObject::root(map), received);
    }
    if let Some(message) = map.get("message").and_then(Value::as_object) {
        let wrapper = JsonObject::root(map);
        let envelope = JsonObject { map: message, path: "message".to_owned() };
        if message.contains_key("type") {
            let received = receive_time(&[wrapper, envelope.clone()])?;
            return parse_envelope(envelope, received);
        }
        return parse_document(&map["message"]);
    }
    parse_document(&value)
}

/// Reads one numeric field of an object.
type Reader<'a> = fn(&JsonObject<'a>, &str) -> Result<Option<i64>>;

/// A JSON object and its path in the document, for error messages.
#[derive(Debug, Clone)]
struct JsonObject<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> JsonObject<'a> {
    fn root(map: &'a Map<String, Value>) -> Self {
        Self { map, path: String::new() }
    }

    /// `value` as an object at `path`.
    fn new(value: &'a Value, path: String) -> Result<Self> {
        match value.as_object() {
            Some(map) => Ok(Self { map, path }),
            None => Err(ParseError::new(path, format!("must be an object, got {}", kind(value)))),
        }
    }

    /// The path of `key`.
    fn at(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    fn err(&self, key: &str, reason: impl Into<String>) -> ParseError {
        ParseError::new(self.at(key), reason)
    }

    /// A field's value; null counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| self.err(key, "is required"))
    }

    fn child(&self, key: &str) -> Result<JsonObject<'a>> {
        JsonObject::new(self.required(key, self.get(key))?, self.at(key))
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("must be a string, got {}", kind(v)))),
        }
    }

    /// A required string.
    fn text(&self, key: &str) -> Result<String> {
        Ok(self.required(key, self.str_opt(key)?)?.to_owned())
    }

    /// An optional string; absent or null is empty.
    fn text_or_empty(&self, key: &str) -> Result<String> {
        Ok(self.str_opt(key)?.unwrap_or_default().to_owned())
    }

    /// An optional boolean; absent or null is false.
    fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(key, format!("must be a boolean, got {}", kind(v)))),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        self.get(key).map(|v| integer(v, &self.at(key))).transpose()
    }

    /// The exact text of a decimal given as a JSON string or number.
    fn decimal_text(&self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|v| decimal_text(v, &self.at(key))).transpose()
    }

    fn dollars(&self, key: &str) -> Result<Option<i64>> {
        self.decimal_text(key)?.map(|s| self.exact(key, decimal::dollars_to_micros(&s))).transpose()
    }

    fn count(&self, key: &str) -> Result<Option<i64>> {
        self.decimal_text(key)?.map(|s| self.exact(key, decimal::count_to_centi(&s))).transpose()
    }

    fn cents(&self, key: &str) -> Result<Option<i64>> {
        self.int(key)?.map(|n| self.exact(key, decimal::cents_to_micros(n))).transpose()
    }

    /// A bare price key of Kalshi's candles: a string is dollars (`/historical/` candles: `"open": "0.4200"`), a
    /// JSON integer legacy cents (`"open": 42`); another number is refused, being neither.
    fn dollars_or_cents(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            Some(Value::String(_)) => self.dollars(key),
            Some(Value::Number(n)) if n.as_i64().is_some() => self.cents(key),
            Some(v) => Err(self.err(key, format!("must be a dollars string or integer cents, got {v}"))),
            None => Ok(None),
        }
    }

    /// A bare count key of Kalshi's candles: a string is a fixed-point count (`/historical/`), a JSON integer
    /// legacy whole contracts.
    fn count_or_contracts(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            Some(Value::String(_)) => self.count(key),
            Some(Value::Number(n)) if n.as_i64().is_some() => self.contracts(key),
            Some(v) => Err(self.err(key, format!("must be a fixed-point count string or integer contracts, got {v}"))),
            None => Ok(None),
        }
    }

    fn contracts(&self, key: &str) -> Result<Option<i64>> {
        self.int(key)?.map(|n| self.exact(key, decimal::contracts_to_centi(n))).transpose()
    }

    fn exact(&self, key: &str, value: std::result::Result<i64, DecimalError>) -> Result<i64> {
        exact(&self.at(key), value)
    }

    /// A value given by a current field, a legacy one or both; both must then agree.
    fn either(
        &self,
        (current, read_current): (&str, Reader<'a>),
        (legacy, read_legacy): (&str, Reader<'a>),
    ) -> Result<Option<i64>> {
        match (read_current(self, current)?, read_legacy(self, legacy)?) {
            (Some(c), Some(l)) if c != l => {
                Err(self.err(legacy, format!("{} disagrees with {current} {}", self.map[legacy], self.map[current])))
            }
            (c, l) => Ok(c.or(l)),
        }
    }

    fn rfc3339(&self, key: &str) -> Result<Option<Timestamp>> {
        match self.str_opt(key)? {
            None => Ok(None),
            Some(s) => rfc3339(s).map(Some).map_err(|reason| self.err(key, reason)),
        }
    }

    fn unix_seconds(&self, key: &str) -> Result<Option<Timestamp>> {
        Ok(self.int(key)?.map(|seconds| Timestamp { seconds, nanos: 0 }))
    }

    fn unix_millis(&self, key: &str) -> Result<Option<Timestamp>> {
        Ok(self.int(key)?.map(millis))
    }

    fn side(&self, key: &str) -> Result<Side> {
        let text = self.text(key)?;
        yes_no(&text).ok_or_else(|| self.err(key, format!("unknown side {text:?} (expected \"yes\" or \"no\")")))
    }

    /// The taker's side of a trade. Kalshi deprecated `taker_side` (yes | no) for `taker_outcome_side` (yes | no)
    /// and `taker_book_side` (bid | ask; a bid is YES, an ask is NO): any of the three will do, and where several
    /// are present they must agree.
    fn taker_side(&self) -> Result<Side> {
        const YES_NO: &str = "(expected \"yes\" or \"no\")";
        let fields: [SideField; 3] = [
            ("taker_outcome_side", yes_no, YES_NO),
            ("taker_book_side", bid_ask, "(expected \"bid\" or \"ask\")"),
            ("taker_side", yes_no, YES_NO),
        ];
        let mut found: Option<(&str, Side)> = None;
        for (key, read, expected) in fields {
            let Some(text) = self.str_opt(key)? else { continue };
            let side = read(text).ok_or_else(|| self.err(key, format!("unknown side {text:?} {expected}")))?;
            match found {
                None => found = Some((key, side)),
                Some((first, other)) if other != side => {
                    return Err(self.err(key, format!("{} disagrees with {first} {}", self.map[key], self.map[first])));
                }
                Some(_) => {}
            }
        }
        found
            .map(|(_, side)| side)
            .ok_or_else(|| self.err("taker_side", "is required (or taker_outcome_side, or taker_book_side)"))
    }

    /// A settlement result; absent or empty is unspecified.
    fn result(&self, key: &str) -> Result<SettlementResult> {
        match self.text_or_empty(key)?.as_str() {
            "" => Ok(SettlementResult::Unspecified),
            "yes" => Ok(SettlementResult::Yes),
            "no" => Ok(SettlementResult::No),
            "scalar" => Ok(SettlementResult::Scalar),
            "void" => Ok(SettlementResult::Void),
            other => Err(self.err(key, format!("unknown result {other:?} (expected yes, no, scalar or void)"))),
        }
    }

    /// A strike as an exact decimal string; absent or null is empty.
    fn strike(&self, key: &str) -> Result<String> {
        let Some(text) = self.decimal_text(key)? else { return Ok(String::new()) };
        decimal::check_plain(&text).map_err(|e| self.err(key, e.to_string()))?;
        Ok(text)
    }

    /// An array's items, each with its path; absent or null is empty.
    fn array(&self, key: &str) -> Result<Vec<(String, &'a Value)>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                Ok(items.iter().enumerate().map(|(i, v)| (format!("{}[{i}]", self.at(key)), v)).collect())
            }
            Some(v) => Err(self.err(key, format!("must be an array, got {}", kind(v)))),
        }
    }
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A decimal conversion's error at `path`.
fn exact(path: &str, value: std::result::Result<i64, DecimalError>) -> Result<i64> {
    value.map_err(|e| ParseError::new(path, e.to_string()))
}

fn integer(v: &Value, path: &str) -> Result<i64> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| ParseError::new(path, format!("must be an integer, got {n}"))),
        _ => Err(ParseError::new(path, format!("must be an integer, got {}", kind(v)))),
    }
}

fn decimal_text(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        // arbitrary_precision: the number's text as written in the document
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(ParseError::new(path, format!("must be a decimal string or number, got {}", kind(v)))),
    }
}

/// An RFC3339 time with at most microsecond precision.
fn rfc3339(s: &str) -> std::result::Result<Timestamp, String> {
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| format!("{s:?} is not an RFC3339 time: {e}"))?;
    let nanos = t.timestamp_subsec_nanos();
    if nanos >= 1_000_000_000 {
        return Err(format!("{s:?} is a leap second"));
    }
    if nanos % 1000 != 0 {
        return Err(format!("{s:?} has digits below a microsecond"));
    }
    Ok(time::to_proto(t.to_utc()))
}

/// Unix milliseconds as a Timestamp.
fn millis(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// The receive time of a line: every receive key on the given objects (wrapper first), which must agree.
fn receive_time(objects: &[JsonObject<'_>]) -> Result<Option<Timestamp>> {
    let mut found: Option<(String, Timestamp)> = None;
    for obj in objects {
        for key in RECEIVE_KEYS {
            let Some(value) = obj.get(key) else { continue };
            let t = match value {
                Value::String(s) => rfc3339(s).map_err(|reason| obj.err(key, reason))?,
                Value::Number(_) => millis(integer(value, &obj.at(key))?),
                v => {
                    return Err(
                        obj.err(key, format!("must be an RFC3339 string or unix milliseconds, got {}", kind(v)))
                    );
                }
            };
            match &found {
                Some((first, earlier)) if *earlier != t => {
                    return Err(obj.err(key, format!("disagrees with {first}")));
                }
                Some(_) => {}
                None => found = Some((obj.at(key), t)),
            }
        }
    }
    Ok(found.map(|(_, t)| t))
}

/// Tells an item from a page envelope: items have an identifying field.
fn is_item(map: &Map<String, Value>) -> bool {
    ["trade_id", "ticker", "event_ticker", "market_ticker"].iter().any(|k| map.contains_key(*k))
}

/// One REST item of any kind, told by its fields.
fn parse_item(value: &Value, path: String, out: &mut Vec<Record>) -> Result<()> {
    let o = JsonObject::new(value, path)?;
    if o.map.contains_key("trade_id") {
        let trade = if o.map.contains_key("ticker") { rest_trade(&o)? } else { ws_trade(&o)? };
        out.push(Record::Trade(trade));
    } else if o.map.contains_key("ticker") && o.map.contains_key("event_ticker") {
        market(&o, out)?;
    } else if o.map.contains_key("event_ticker") {
        event(&o, out)?;
    } else if o.map.contains_key("ticker") {
        out.push(Record::Series(series(&o)?));
    } else {
        let what = if o.path.is_empty() { "the document" } else { "item" };
        return Err(ParseError::new(
            if o.path.is_empty() { "json".to_owned() } else { o.path.clone() },
            format!("cannot tell the kind of {what}: no trade_id, ticker or event_ticker"),
        ));
    }
    Ok(())
}

/// A REST page, in a fixed order: series, events, markets, trades.
fn parse_page(map: &Map<String, Value>, out: &mut Vec<Record>) -> Result<()> {
    const KEYS: [&str; 7] = ["series", "events", "event", "markets", "market", "trades", "cursor"];
    let page = JsonObject::root(map);
    if !KEYS.iter().any(|k| map.contains_key(*k)) {
        return Err(ParseError::new(
            "json",
            "not a Kalshi document: no trades, markets, market, events, event or series",
        ));
    }
    match page.get("series") {
        Some(Value::Array(_)) => {
            for (path, item) in page.array("series")? {
                out.push(Record::Series(series(&JsonObject::new(item, path)?)?));
            }
        }
        Some(item) => out.push(Record::Series(series(&JsonObject::new(item, page.at("series"))?)?)),
        None => {}
    }
    for (path, item) in page.array("events")? {
        event(&JsonObject::new(item, path)?, out)?;
    }
    // GetEventResponse's top-level markets repeat the nested ones when with_nested_markets is set
    let mut nested = BTreeMap::new();
    if let Some(item) = page.get("event") {
        let start = out.len();
        event(&JsonObject::new(item, page.at("event"))?, out)?;
        for record in &out[start..] {
            if let Record::Market(m) = record {
                nested.insert(m.ticker.clone(), m.clone());
            }
        }
    }
    for (path, item) in page.array("markets")? {
        let mut records = Vec::new();
        market(&JsonObject::new(item, path.clone())?, &mut records)?;
        match records.first() {
            Some(Record::Market(m)) if nested.get(&m.ticker) == Some(m) => {}
            Some(Record::Market(m)) if nested.contains_key(&m.ticker) => {
                return Err(ParseError::new(path, format!("market {} disagrees with event.markets", m.ticker)));
            }
            _ => out.extend(records),
        }
    }
    if let Some(item) = page.get("market") {
        market(&JsonObject::new(item, page.at("market"))?, out)?;
    }
    for (path, item) in page.array("trades")? {
        out.push(Record::Trade(rest_trade(&JsonObject::new(item, path)?)?));
    }
    Ok(())
}

/// A page of Kalshi's candlesticks: `candlesticks` (one market's: `ticker` beside it), or `markets` whose items
/// carry `market_ticker` and `candlesticks` (the multi-market `/markets/candlesticks`).
fn is_candle_page(map: &Map<String, Value>) -> bool {
    map.contains_key("candlesticks")
        || map
            .get("markets")
            .and_then(Value::as_array)
            .is_some_and(|m| m.first().and_then(Value::as_object).is_some_and(|item| item.contains_key("candlesticks")))
}

/// Kalshi's candlestick pages do not say their period (it is the request's `period_interval`): the document
/// must, beside the candles. Guessing it from the spacing of `end_period_ts` fails for a page of one candle, or
/// of candles with gaps (Kalshi skips periods without activity).
fn candle_page(page: &JsonObject<'_>, out: &mut Vec<Record>) -> Result<()> {
    let period = page.int("period_interval")?.ok_or_else(|| {
        page.err(
            "period_interval",
            "is required: Kalshi's candlestick pages do not carry their period; add the request's period_interval \
             (1, 60 or 1440) to the document, e.g. {\"ticker\": .., \"period_interval\": 60, \"candlesticks\": [..]}",
        )
    })?;
    let period_minutes = match period {
        1 | 60 | 1440 => period as i32,
        other => return Err(page.err("period_interval", format!("must be 1, 60 or 1440, got {other}"))),
    };
    if page.has("candlesticks") {
        let ticker = page.text("ticker")?;
        for (path, item) in page.array("candlesticks")? {
            out.push(Record::KalshiCandle(candle(&JsonObject::new(item, path)?, &ticker, period_minutes)?));
        }
    }
    for (path, market) in page.array("markets")? {
        let market = JsonObject::new(market, path)?;
        let ticker = market.text("market_ticker")?;
        for (path, item) in market.array("candlesticks")? {
            out.push(Record::KalshiCandle(candle(&JsonObject::new(item, path)?, &ticker, period_minutes)?));
        }
    }
    Ok(())
}

/// One candlestick, in any of Kalshi's shapes: live (`yes_bid.open_dollars`, `volume_fp`), `/historical/`
/// (`yes_bid.open` as a dollars string, `volume` as a count string) or legacy (`yes_bid.open` in integer cents,
/// `volume` in whole contracts). Where a current and a bare field are both given they must agree.
fn candle(o: &JsonObject<'_>, ticker: &str, period_minutes: i32) -> Result<proto::KalshiCandle> {
    let end = o.required("end_period_ts", o.unix_seconds("end_period_ts")?)?;
    let field = |side: &JsonObject<'_>, name: &str| -> Result<Option<i64>> {
        let current = format!("{name}_dollars");
        side.either((&current, JsonObject::dollars), (name, JsonObject::dollars_or_cents))
    };
    let quotes = |key: &str| -> Result<[i64; 4]> {
        let side = o.child(key)?;
        let mut out = [0; 4];
        for (slot, name) in out.iter_mut().zip(["open", "high", "low", "close"]) {
            *slot = side.required(&format!("{name}_dollars"), field(&side, name)?)?;
        }
        Ok(out)
    };
    let [bid_open, bid_high, bid_low, bid_close] = quotes("yes_bid")?;
    let [ask_open, ask_high, ask_low, ask_close] = quotes("yes_ask")?;
    // every price field is nullable (no trade in the period), and so is the whole object in older pages
    let price = match o.get("price") {
        None => None,
        Some(_) => Some(o.child("price")?),
    };
    let traded = |name: &str| price.as_ref().map_or(Ok(None), |p| field(p, name));
    let volume = o.either(("volume_fp", JsonObject::count), ("volume", JsonObject::count_or_contracts))?;
    let open_interest =
        o.either(("open_interest_fp", JsonObject::count), ("open_interest", JsonObject::count_or_contracts))?;
    Ok(proto::KalshiCandle {
        market_ticker: ticker.to_owned(),
        period_minutes,
        end_time: Some(end),
        yes_bid_open_micros: bid_open,
        yes_bid_high_micros: bid_high,
        yes_bid_low_micros: bid_low,
        yes_bid_close_micros: bid_close,
        yes_ask_open_micros: ask_open,
        yes_ask_high_micros: ask_high,
        yes_ask_low_micros: ask_low,
        yes_ask_close_micros: ask_close,
        price_open_micros: traded("open")?,
        price_high_micros: traded("high")?,
        price_low_micros: traded("low")?,
        price_close_micros: traded("close")?,
        price_mean_micros: traded("mean")?,
        price_previous_micros: traded("previous")?,
        volume_centi: o.required("volume_fp", volume)?,
        open_interest_centi: o.required("open_interest_fp", open_interest)?,
        ingest_seq: 0,
    })
}

/// A REST Trade: `ticker`, `created_time`.
fn rest_trade(o: &JsonObject<'_>) -> Result<proto::Trade> {
    let time = o.required("created_time", o.rfc3339("created_time")?)?;
    trade(o, o.text("ticker")?, time)
}

/// A WebSocket trade: `market_ticker`, time from `ts_ms`, else `ts`, else `created_time`.
fn ws_trade(o: &JsonObject<'_>) -> Result<proto::Trade> {
    let time = match (o.unix_millis("ts_ms")?, o.unix_seconds("ts")?, o.rfc3339("created_time")?) {
        (Some(t), _, _) | (None, Some(t), _) | (None, None, Some(t)) => t,
        (None, None, None) => return Err(o.err("ts", "is required (or ts_ms, or created_time)")),
    };
    trade(o, o.text("market_ticker")?, time)
}

/// A field that names a trade's direction: its key, how its values read, and what they may be.
type SideField = (&'static str, fn(&str) -> Option<Side>, &'static str);

fn yes_no(text: &str) -> Option<Side> {
    match text {
        "yes" => Some(Side::Yes),
        "no" => Some(Side::No),
        _ => None,
    }
}

/// Kalshi's book vocabulary for a side: bid is always YES, ask always NO.
fn bid_ask(text: &str) -> Option<Side> {
    match text {
        "bid" => Some(Side::Yes),
        "ask" => Some(Side::No),
        _ => None,
    }
}

/// The fields that REST and WebSocket trades share. Fields this service does not store (`is_block_trade`, and
/// any Kalshi adds) are ignored on purpose: a trade is the same trade with or without them.
fn trade(o: &JsonObject<'_>, market_ticker: String, time: Timestamp) -> Result<proto::Trade> {
    let yes = o.either(("yes_price_dollars", JsonObject::dollars), ("yes_price", JsonObject::cents))?;
    let yes = o.required("yes_price_dollars", yes)?;
    let no = o.either(("no_price_dollars", JsonObject::dollars), ("no_price", JsonObject::cents))?;
    if let Some(no) = no
        && no != ONE_DOLLAR - yes
    {
        let key = if o.has("no_price_dollars") { "no_price_dollars" } else { "no_price" };
        return Err(
            o.err(key, format!("{} is not 1 - yes price ({} micros), got {no} micros", o.map[key], ONE_DOLLAR - yes))
        );
    }
    let count = o.either(("count_fp", JsonObject::count), ("count", JsonObject::contracts))?;
    Ok(proto::Trade {
        trade_id: o.text("trade_id")?,
        market_ticker,
        time: Some(time),
        yes_price_micros: yes,
        no_price_micros: no.unwrap_or(0),
        count_centi: o.required("count_fp", count)?,
        taker_side: o.taker_side()? as i32,
        ingest_seq: 0,
    })
}

/// A Market, and its Settlement when the market has a result.
fn market(o: &JsonObject<'_>, out: &mut Vec<Record>) -> Result<()> {
    let ticker = o.text("ticker")?;
    let event_ticker = o.text("event_ticker")?;
    let series_ticker = match o.str_opt("series_ticker")? {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => event_ticker.split('-').next().unwrap_or_default().to_owned(),
    };
    let market_type = match o.text_or_empty("market_type")?.as_str() {
        "" => MarketType::Unspecified,
        "binary" => MarketType::Binary,
        "scalar" => MarketType::Scalar,
        other => return Err(o.err("market_type", format!("unknown market type {other:?} (expected binary or scalar)"))),
    };
    let status = match o.text("status")?.as_str() {
        "initialized" | "unopened" => MarketStatus::Initialized,
        "inactive" => MarketStatus::Inactive,
        "active" | "open" => MarketStatus::Active,
        "closed" => MarketStatus::Closed,
        "determined" => MarketStatus::Determined,
        "disputed" => MarketStatus::Disputed,
        "amended" => MarketStatus::Amended,
        "finalized" | "settled" => MarketStatus::Finalized,
        other => {
            return Err(o.err(
                "status",
                format!(
                    "unknown status {other:?} (expected initialized, inactive, active, closed, determined, \
                     disputed, amended, finalized, or legacy unopened, open, settled)"
                ),
            ));
        }
    };
    let settlement_timer_seconds = match o.int("settlement_timer_seconds")? {
        None => 0,
        Some(n) => i32::try_from(n).map_err(|_| o.err("settlement_timer_seconds", format!("{n} is out of range")))?,
    };
    let updated_time = o.rfc3339("updated_time")?;
    let market = proto::Market {
        ticker: ticker.clone(),
        event_ticker: event_ticker.clone(),
        series_ticker: series_ticker.clone(),
        market_type: market_type as i32,
        title: o.text_or_empty("title")?,
        yes_sub_title: o.text_or_empty("yes_sub_title")?,
        no_sub_title: o.text_or_empty("no_sub_title")?,
        status: status as i32,
        open_time: o.rfc3339("open_time")?,
        close_time: o.rfc3339("close_time")?,
        expected_expiration_time: o.rfc3339("expected_expiration_time")?,
        latest_expiration_time: o.rfc3339("latest_expiration_time")?,
        settlement_timer_seconds,
        can_close_early: o.flag("can_close_early")?,
        strike_type: o.text_or_empty("strike_type")?,
        floor_strike: o.strike("floor_strike")?,
        cap_strike: o.strike("cap_strike")?,
        rules_primary: o.text_or_empty("rules_primary")?,
        rules_secondary: o.text_or_empty("rules_secondary")?,
        updated_time,
    };
    let result = o.result("result")?;
    let settlement = if result == SettlementResult::Unspecified {
        None
    } else {
        let value =
            o.either(("settlement_value_dollars", JsonObject::dollars), ("settlement_value", JsonObject::cents))?;
        let key = if o.has("settlement_value_dollars") { "settlement_value_dollars" } else { "settlement_value" };
        let value = match (result, value) {
            (SettlementResult::Yes, None) => ONE_DOLLAR,
            (SettlementResult::No, None) => 0,
            (SettlementResult::Yes, Some(v)) if v != ONE_DOLLAR => {
                return Err(o.err(key, format!("{} contradicts result yes (1 USD)", o.map[key])));
            }
            (SettlementResult::No, Some(v)) if v != 0 => {
                return Err(o.err(key, format!("{} contradicts result no (0 USD)", o.map[key])));
            }
            (_, Some(v)) => v,
            (_, None) => {
                return Err(o.err("settlement_value_dollars", format!("is required for result {}", o.map["result"])));
            }
        };
        Some(proto::Settlement {
            market_ticker: ticker,
            event_ticker,
            series_ticker,
            result: result as i32,
            settlement_value_micros: value,
            determined_time: None,
            settled_time: o.rfc3339("settlement_ts")?,
            updated_time,
        })
    };
    out.push(Record::Market(market));
    out.extend(settlement.map(Record::Settlement));
    Ok(())
}

/// An EventData, then its nested markets.
fn event(o: &JsonObject<'_>, out: &mut Vec<Record>) -> Result<()> {
    out.push(Record::Event(proto::Event {
        event_ticker: o.text("event_ticker")?,
        series_ticker: o.text("series_ticker")?,
        title: o.text_or_empty("title")?,
        sub_title: o.text_or_empty("sub_title")?,
        category: o.text_or_empty("category")?,
        mutually_exclusive: o.flag("mutually_exclusive")?,
        strike_date: o.rfc3339("strike_date")?,
        strike_period: o.text_or_empty("strike_period")?,
        updated_time: o.rfc3339("last_updated_ts")?,
    }));
    for (path, item) in o.array("markets")? {
        market(&JsonObject::new(item, path)?, out)?;
    }
    Ok(())
}

fn series(o: &JsonObject<'_>) -> Result<proto::Series> {
    let tags = o
        .array("tags")?
        .into_iter()
        .map(|(path, tag)| match tag {
            Value::String(s) => Ok(s.clone()),
            v => Err(ParseError::new(path, format!("must be a string, got {}", kind(v)))),
        })
        .collect::<Result<_>>()?;
    Ok(proto::Series {
        ticker: o.text("ticker")?,
        title: o.text_or_empty("title")?,
        category: o.text_or_empty("category")?,
        tags,
        frequency: o.text_or_empty("frequency")?,
        contract_url: o.text_or_empty("contract_url")?,
        fee_type: o.text_or_empty("fee_type")?,
        updated_time: o.rfc3339("last_updated_ts")?,
    })
}

/// A WebSocket envelope `{type, sid, seq, msg}` and the line's receive time.
fn parse_envelope(env: JsonObject<'_>, received: Option<Timestamp>) -> Result<Vec<Record>> {
    let kind = env.text("type")?;
    let needs_received = |what: &str| {
        received.ok_or_else(|| ParseError::new("received_at", format!("is required: {what} carries no exchange time")))
    };
    let record = match kind.as_str() {
        "trade" => Record::Trade(ws_trade(&env.child("msg")?)?),
        "orderbook_snapshot" => {
            let time = needs_received("an orderbook snapshot")?;
            Record::Snapshot(snapshot(&env, &env.child("msg")?, time)?)
        }
        "orderbook_delta" => {
            let msg = env.child("msg")?;
            let time = match received {
                Some(t) => t,
                None => delta_time(&msg)?,
            };
            Record::Delta(delta(&env, &msg, time)?)
        }
        "market_lifecycle_v2" => {
            let time = needs_received("a market lifecycle event")?;
            Record::Lifecycle(lifecycle(&env.child("msg")?, time)?)
        }
        _ => Record::Ignored(kind),
    };
    Ok(vec![record])
}

/// A delta's exchange time when the line has no receive time: `ts` (RFC3339, or unix seconds), else `ts_ms`.
fn delta_time(msg: &JsonObject<'_>) -> Result<Timestamp> {
    let ts = match msg.get("ts") {
        Some(Value::Number(_)) => msg.unix_seconds("ts")?,
        _ => msg.rfc3339("ts")?,
    };
    match (ts, msg.unix_millis("ts_ms")?) {
        (Some(t), _) | (None, Some(t)) => Ok(t),
        (None, None) => Err(msg.err("ts", "is required when the line has no receive time (received_at)")),
    }
}

fn snapshot(env: &JsonObject<'_>, msg: &JsonObject<'_>, time: Timestamp) -> Result<proto::OrderbookSnapshot> {
    Ok(proto::OrderbookSnapshot {
        market_ticker: msg.text("market_ticker")?,
        time: Some(time),
        sid: env.required("sid", env.int("sid")?)?,
        seq: env.required("seq", env.int("seq")?)?,
        yes_bids: book_side(msg, "yes")?,
        no_bids: book_side(msg, "no")?,
        ingest_seq: 0,
    })
}

/// One side of a snapshot from every format present (`yes_dollars_fp`, `yes_dollars`, legacy `yes`), which must
/// agree; absent is empty.
fn book_side(msg: &JsonObject<'_>, side: &str) -> Result<Vec<proto::OrderbookLevel>> {
    let formats = [(format!("{side}_dollars_fp"), false), (format!("{side}_dollars"), false), (side.to_owned(), true)];
    let mut first: Option<(&str, Vec<proto::OrderbookLevel>)> = None;
    for (key, legacy) in &formats {
        if !msg.has(key) {
            continue;
        }
        let mut levels =
            msg.array(key)?.into_iter().map(|(path, v)| level(v, &path, *legacy)).collect::<Result<Vec<_>>>()?;
        levels.sort_by_key(|l| l.price_micros);
        if let Some(pair) = levels.windows(2).find(|w| w[0].price_micros == w[1].price_micros) {
            return Err(msg.err(key, format!("price {} micros appears twice", pair[0].price_micros)));
        }
        match &first {
            Some((earlier, theirs)) if *theirs != levels => {
                return Err(msg.err(key, format!("disagrees with {earlier}")));
            }
            Some(_) => {}
            None => first = Some((key, levels)),
        }
    }
    Ok(first.map(|(_, levels)| levels).unwrap_or_default())
}

/// One `[price, count]` level: dollars and a decimal count, or legacy integer cents and contracts.
fn level(value: &Value, path: &str, legacy: bool) -> Result<proto::OrderbookLevel> {
    let pair = match value.as_array() {
        Some(pair) if pair.len() == 2 => pair,
        _ => return Err(ParseError::new(path, "must be a [price, count] pair")),
    };
    let (price_path, count_path) = (format!("{path}[0]"), format!("{path}[1]"));
    if legacy {
        return Ok(proto::OrderbookLevel {
            price_micros: exact(&price_path, decimal::cents_to_micros(integer(&pair[0], &price_path)?))?,
            size_centi: exact(&count_path, decimal::contracts_to_centi(integer(&pair[1], &count_path)?))?,
        });
    }
    // an integer count is whole contracts, which count_to_centi reads the same as the fixed-point string
    Ok(proto::OrderbookLevel {
        price_micros: exact(&price_path, decimal::dollars_to_micros(&decimal_text(&pair[0], &price_path)?))?,
        size_centi: exact(&count_path, decimal::count_to_centi(&decimal_text(&pair[1], &count_path)?))?,
    })
}

fn delta(env: &JsonObject<'_>, msg: &JsonObject<'_>, time: Timestamp) -> Result<proto::OrderbookDelta> {
    let price = msg.either(("price_dollars", JsonObject::dollars), ("price", JsonObject::cents))?;
    let delta = msg.either(("delta_fp", JsonObject::count), ("delta", JsonObject::contracts))?;
    Ok(proto::OrderbookDelta {
        market_ticker: msg.text("market_ticker")?,
        time: Some(time),
        sid: env.required("sid", env.int("sid")?)?,
        seq: env.required("seq", env.int("seq")?)?,
        side: msg.side("side")? as i32,
        price_micros: msg.required("price_dollars", price)?,
        delta_centi: msg.required("delta_fp", delta)?,
        ingest_seq: 0,
    })
}

fn lifecycle(msg: &JsonObject<'_>, time: Timestamp) -> Result<proto::LifecycleEvent> {
    let paused = match msg.get("is_deactivated") {
        None => None,
        Some(_) => Some(msg.flag("is_deactivated")?),
    };
    let event_type = match (msg.text("event_type")?.as_str(), paused) {
        ("created", _) => LifecycleEventType::Created,
        ("activated", None | Some(false)) | ("deactivated", Some(false)) => LifecycleEventType::Activated,
        ("deactivated", None | Some(true)) => LifecycleEventType::Deactivated,
        ("activated", Some(true)) => return Err(msg.err("is_deactivated", "is true for an activated event")),
        ("close_date_updated", _) => LifecycleEventType::CloseDateUpdated,
        ("determined", _) => LifecycleEventType::Determined,
        ("settled", _) => LifecycleEventType::Settled,
        (other, _) => {
            return Err(msg.err(
                "event_type",
                format!(
                    "unknown event type {other:?} (expected created, activated, deactivated, close_date_updated, \
                     determined or settled)"
                ),
            ));
        }
    };
    // a dollars string: a bare number could be legacy cents
    let settlement_value_micros = match msg.get("settlement_value") {
        None => None,
        Some(Value::String(_)) => msg.dollars("settlement_value")?,
        Some(v) => {
            return Err(msg.err("settlement_value", format!("must be a fixed-point dollars string, got {}", kind(v))));
        }
    };
    Ok(proto::LifecycleEvent {
        market_ticker: msg.text("market_ticker")?,
        time: Some(time),
        event_type: event_type as i32,
        open_time: msg.unix_seconds("open_ts")?,
        close_time: msg.unix_seconds("close_ts")?,
        result: msg.result("result")? as i32,
        settlement_value_micros,
        determined_time: msg.unix_seconds("determination_ts")?,
        settled_time: msg.unix_seconds("settled_ts")?,
        ingest_seq: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRADES_CURRENT: &str = include_str!("../../tests/fixtures/kalshi/trades_current.json");
    const TRADES_LEGACY: &str = include_str!("../../tests/fixtures/kalshi/trades_legacy.json");
    const HISTORICAL_TRADES: &str = include_str!("../../tests/fixtures/kalshi/historical_trades.json");
    const MARKETS_CURRENT: &str = include_str!("../../tests/fixtures/kalshi/markets_current.json");
    const MARKETS_LEGACY: &str = include_str!("../../tests/fixtures/kalshi/markets_legacy.json");
    const EVENTS: &str = include_str!("../../tests/fixtures/kalshi/events.json");
    const SERIES: &str = include_str!("../../tests/fixtures/kalshi/series.json");
    const WS_CURRENT: &str = include_str!("../../tests/fixtures/kalshi/ws_current.jsonl");
    const WS_LEGACY: &str = include_str!("../../tests/fixtures/kalshi/ws_legacy.jsonl");

    const BTC: &str = "KXBTCD-25NOV2517-T99999.99";
    const NYC: &str = "KXHIGHNY-25NOV25-B53.5";

    fn ts(s: &str) -> Option<Timestamp> {
        Some(rfc3339(s).expect("test time"))
    }

    fn document(text: &str) -> Vec<Record> {
        parse_document(&serde_json::from_str(text).expect("fixture is JSON")).expect("fixture converts")
    }

    fn lines(text: &str) -> Vec<Record> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            out.extend(parse_line(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)));
        }
        out
    }

    fn line_error(line: &str) -> String {
        match parse_line(line) {
            Ok(records) => panic!("{line}: converted to {records:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn document_error(text: &str) -> String {
        match parse_document(&serde_json::from_str(text).expect("JSON")) {
            Ok(records) => panic!("{text}: converted to {records:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn trades(records: &[Record]) -> Vec<proto::Trade> {
        records
            .iter()
            .map(|r| if let Record::Trade(t) = r { t.clone() } else { panic!("not a trade: {r:?}") })
            .collect()
    }

    fn trade(id: &str, ticker: &str, time: &str, yes: i64, no: i64, count: i64, side: Side) -> proto::Trade {
        proto::Trade {
            trade_id: id.into(),
            market_ticker: ticker.into(),
            time: ts(time),
            yes_price_micros: yes,
            no_price_micros: no,
            count_centi: count,
            taker_side: side as i32,
            ingest_seq: 0,
        }
    }

    fn btc_market() -> proto::Market {
        proto::Market {
            ticker: BTC.into(),
            event_ticker: "KXBTCD-25NOV2517".into(),
            series_ticker: "KXBTCD".into(),
            market_type: MarketType::Binary as i32,
            title: "Bitcoin price on Nov 25, 2025?".into(),
            yes_sub_title: "$100,000 or above".into(),
            no_sub_title: "$100,000 or above".into(),
            status: MarketStatus::Active as i32,
            open_time: ts("2025-11-24T22:00:00Z"),
            close_time: ts("2025-11-25T22:00:00Z"),
            expected_expiration_time: ts("2025-11-25T22:05:00Z"),
            latest_expiration_time: ts("2025-12-02T22:00:00Z"),
            settlement_timer_seconds: 60,
            can_close_early: false,
            strike_type: "greater".into(),
            floor_strike: "99999.99".into(),
            cap_strike: String::new(),
            rules_primary: "If the simple average of the sixty seconds of CF Benchmarks' Bitcoin Real-Time Index \
                            (BRTI) before 5 PM EST is above 99999.99 on Nov 25, 2025, then the market resolves to Yes."
                .into(),
            rules_secondary: "Not all cryptocurrency price data is the same.".into(),
            updated_time: ts("2025-11-25T14:00:00.250Z"),
        }
    }

    #[test]
    fn current_trades_convert_exactly() {
        let got = trades(&document(TRADES_CURRENT));
        let d91 = "d91bc706-ee49-470d-82d8-11418bda6fed";
        let want = vec![
            trade(
                "6c1e7d52-3f0b-4d8e-9a41-2b5f0c9d7e11",
                BTC,
                "2025-11-25T14:03:07.123456Z",
                290_000,
                710_000,
                1234,
                Side::Yes,
            ),
            trade(d91, NYC, "2025-11-25T14:03:09Z", 360_000, 640_000, 13_600, Side::No),
            trade(
                "0f2a9b34-7c61-4e05-b8d3-5a6e4f1c2d90",
                NYC,
                "2025-11-25T14:03:10.517Z",
                990_000,
                10_000,
                500,
                Side::Yes,
            ),
            trade(
                "a8e4c0d1-52b7-4f3e-8c19-7d0b6e2f4a53",
                BTC,
                "2025-11-25T14:03:11.000250Z",
                425_000,
                575_000,
                250,
                Side::No,
            ),
        ];
        assert_eq!(got, want);
        assert_eq!(got[0].time, Some(Timestamp { seconds: 1_764_079_387, nanos: 123_456_000 }));
    }

    #[test]
    fn legacy_trades_convert_to_the_same_protos_as_current_ones() {
        let current = trades(&document(TRADES_CURRENT));
        let legacy = trades(&document(TRADES_LEGACY));
        // same trades, integer cents and contracts, one time with a -05:00 offset
        assert_eq!(legacy[..2], current[1..3]);
        // no_price absent: derived (0)
        let want =
            trade("3b7d2e80-1a4c-49f6-a2e5-8c3f9d0b1e72", NYC, "2025-11-25T13:58:42.020Z", 410_000, 0, 4000, Side::Yes);
        assert_eq!(legacy[2], want);
    }

    #[test]
    fn historical_trades_with_both_formats_agree() {
        let got = trades(&document(HISTORICAL_TRADES));
        let ticker = "KXBTCD-24DEC3117-T93999.99";
        assert_eq!(
            got,
            vec![
                trade(
                    "5e0c8a17-9d2b-4f61-b3a4-0e7f1c6d2b85",
                    ticker,
                    "2024-12-31T21:59:58.004117Z",
                    470_000,
                    530_000,
                    2500,
                    Side::No
                ),
                trade(
                    "c24f6e09-8b13-4a7d-95e2-6f1d0a3c7b48",
                    ticker,
                    "2024-12-31T21:59:59.871Z",
                    520_000,
                    480_000,
                    100,
                    Side::Yes
                ),
            ]
        );
    }

    #[test]
    fn current_markets_and_their_settlements() {
        let got = document(MARKETS_CURRENT);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], Record::Market(btc_market()));
        let Record::Market(nyc) = &got[1] else { panic!("{:?}", got[1]) };
        assert_eq!((nyc.series_ticker.as_str(), nyc.status), ("KXHIGHNY", MarketStatus::Determined as i32));
        assert_eq!((nyc.floor_strike.as_str(), nyc.cap_strike.as_str()), ("53", "54"));
        assert!(nyc.can_close_early);
        assert_eq!(
            got[2],
            Record::Settlement(proto::Settlement {
                market_ticker: NYC.into(),
                event_ticker: "KXHIGHNY-25NOV25".into(),
                series_ticker: "KXHIGHNY".into(),
                result: SettlementResult::Yes as i32,
                settlement_value_micros: 1_000_000,
                determined_time: None,
                settled_time: None,
                updated_time: ts("2025-11-26T13:02:41.118Z"),
            })
        );
        let Record::Market(cpi) = &got[3] else { panic!("{:?}", got[3]) };
        assert_eq!(cpi.market_type, MarketType::Scalar as i32);
        assert_eq!(cpi.status, MarketStatus::Finalized as i32);
        // the number's text as written, not "2"
        assert_eq!((cpi.floor_strike.as_str(), cpi.cap_strike.as_str()), ("2.0", "4.0"));
        let Record::Settlement(s) = &got[4] else { panic!("{:?}", got[4]) };
        assert_eq!(s.result, SettlementResult::Scalar as i32);
        assert_eq!(s.settlement_value_micros, 650_000);
        assert_eq!(s.settled_time, ts("2025-11-13T13:45:00Z"));
        assert_eq!(s.updated_time, cpi.updated_time);
    }

    #[test]
    fn legacy_markets_convert_to_the_same_protos_as_current_ones() {
        let current = document(MARKETS_CURRENT);
        let legacy = document(MARKETS_LEGACY);
        assert_eq!(legacy.len(), 6, "{legacy:?}");
        // "open" with a string strike is the current "active" with a number strike
        assert_eq!(legacy[0], current[0]);
        // "settled" with settlement_value 65 cents is "finalized" with "0.6500"
        assert_eq!(legacy[1..3], current[3..5]);
        let Record::Market(unopened) = &legacy[3] else { panic!("{:?}", legacy[3]) };
        assert_eq!(unopened.status, MarketStatus::Initialized as i32);
        assert_eq!((unopened.updated_time, unopened.expected_expiration_time), (None, None));
        let Record::Market(settled_no) = &legacy[4] else { panic!("{:?}", legacy[4]) };
        assert_eq!(settled_no.status, MarketStatus::Finalized as i32);
        let Record::Settlement(no) = &legacy[5] else { panic!("{:?}", legacy[5]) };
        assert_eq!((no.result, no.settlement_value_micros), (SettlementResult::No as i32, 0));
        assert_eq!(no.settled_time, ts("2025-11-26T15:30:00Z"));
    }

    #[test]
    fn events_with_nested_markets() {
        let got = document(EVENTS);
        let kinds: Vec<&str> = got
            .iter()
            .map(|r| match r {
                Record::Event(_) => "event",
                Record::Market(_) => "market",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["event", "market", "market", "event", "event"]);
        assert_eq!(
            got[0],
            Record::Event(proto::Event {
                event_ticker: "KXBTCD-25NOV2517".into(),
                series_ticker: "KXBTCD".into(),
                title: "Bitcoin price on Nov 25, 2025 at 5pm EST?".into(),
                sub_title: "On Nov 25, 2025 at 5pm EST".into(),
                category: "Crypto".into(),
                mutually_exclusive: false,
                strike_date: ts("2025-11-25T22:00:00Z"),
                strike_period: String::new(),
                updated_time: ts("2025-11-24T21:45:03.512907Z"),
            })
        );
        assert_eq!(got[1], Record::Market(btc_market()));
        let Record::Market(inactive) = &got[2] else { panic!("{:?}", got[2]) };
        assert_eq!((inactive.status, inactive.floor_strike.as_str()), (MarketStatus::Inactive as i32, "100999.99"));
        let Record::Event(nyc) = &got[3] else { panic!("{:?}", got[3]) };
        assert!(nyc.mutually_exclusive);
        let Record::Event(cpi) = &got[4] else { panic!("{:?}", got[4]) };
        assert_eq!((cpi.strike_period.as_str(), cpi.category.as_str()), ("month", ""));
        assert_eq!((cpi.strike_date, cpi.updated_time), (None, None));
    }

    #[test]
    fn series_list() {
        let got = document(SERIES);
        assert_eq!(
            got[0],
            Record::Series(proto::Series {
                ticker: "KXBTCD".into(),
                title: "Bitcoin price Above/below".into(),
                category: "Crypto".into(),
                tags: vec!["BTC".into(), "Digital Assets".into()],
                frequency: "daily".into(),
                contract_url: "https://kalshi-public-docs.s3.amazonaws.com/contract_terms/BTC.pdf".into(),
                fee_type: "quadratic".into(),
                updated_time: Some(Timestamp { seconds: 1_759_320_000, nanos: 1000 }),
            })
        );
        let Record::Series(nyc) = &got[1] else { panic!("{:?}", got[1]) };
        assert!(nyc.tags.is_empty());
        assert_eq!((nyc.fee_type.as_str(), nyc.updated_time), ("quadratic_with_maker_fees", None));
        let Record::Series(cpi) = &got[2] else { panic!("{:?}", got[2]) };
        assert_eq!((cpi.frequency.as_str(), cpi.tags.as_slice()), ("monthly", ["Inflation".to_owned()].as_slice()));
    }

    fn btc_snapshot() -> proto::OrderbookSnapshot {
        let level = |price_micros, size_centi| proto::OrderbookLevel { price_micros, size_centi };
        proto::OrderbookSnapshot {
            market_ticker: BTC.into(),
            time: ts("2025-11-25T14:03:07.123Z"),
            sid: 1,
            seq: 1,
            yes_bids: vec![level(80_000, 30_000), level(220_000, 33_300), level(280_000, 2000)],
            no_bids: vec![level(540_000, 2000), level(700_000, 14_600)],
            ingest_seq: 0,
        }
    }

    fn delta(seq: i64, time: &str, side: Side, price_micros: i64, delta_centi: i64) -> proto::OrderbookDelta {
        proto::OrderbookDelta {
            market_ticker: BTC.into(),
            time: ts(time),
            sid: 1,
            seq,
            side: side as i32,
            price_micros,
            delta_centi,
            ingest_seq: 0,
        }
    }

    fn lifecycle_event(ticker: &str, time: &str, event_type: LifecycleEventType) -> proto::LifecycleEvent {
        proto::LifecycleEvent {
            market_ticker: ticker.into(),
            time: ts(time),
            event_type: event_type as i32,
            ..Default::default()
        }
    }

    #[test]
    fn current_websocket_log() {
        let got = lines(WS_CURRENT);
        let seconds = |seconds| Some(Timestamp { seconds, nanos: 0 });
        let b49 = "KXHIGHNY-25NOV26-B49.5";
        let want = vec![
            Record::Ignored("subscribed".into()),
            Record::Snapshot(btc_snapshot()),
            // the receive time, not the exchange's whole-second ts
            Record::Delta(delta(2, "2025-11-25T14:03:07.250Z", Side::Yes, 280_000, -2000)),
            // ts_ms wins over ts
            Record::Trade(trade(
                "6c1e7d52-3f0b-4d8e-9a41-2b5f0c9d7e11",
                BTC,
                "2025-11-25T14:03:07.123Z",
                290_000,
                710_000,
                1234,
                Side::Yes,
            )),
            Record::Ignored("ticker".into()),
            Record::Delta(delta(3, "2025-11-25T14:03:08.004Z", Side::No, 700_000, 1250)),
            Record::Trade(trade(
                "d91bc706-ee49-470d-82d8-11418bda6fed",
                NYC,
                "2025-11-25T14:03:09Z",
                360_000,
                640_000,
                13_600,
                Side::No,
            )),
            Record::Lifecycle(proto::LifecycleEvent {
                open_time: seconds(1_764_082_800),
                close_time: seconds(1_764_219_540),
                ..lifecycle_event(b49, "2025-11-25T15:00:01.500Z", LifecycleEventType::Created)
            }),
            Record::Lifecycle(lifecycle_event(b49, "2025-11-25T18:30:00Z", LifecycleEventType::Deactivated)),
            // "deactivated" with is_deactivated false: trading resumed
            Record::Lifecycle(lifecycle_event(b49, "2025-11-25T18:45:00Z", LifecycleEventType::Activated)),
            Record::Lifecycle(proto::LifecycleEvent {
                result: SettlementResult::Yes as i32,
                settlement_value_micros: Some(1_000_000),
                determined_time: seconds(1_764_162_161),
                ..lifecycle_event(NYC, "2025-11-26T13:02:41.300Z", LifecycleEventType::Determined)
            }),
            Record::Lifecycle(proto::LifecycleEvent {
                settled_time: seconds(1_764_163_961),
                ..lifecycle_event(NYC, "2025-11-26T13:32:41.900Z", LifecycleEventType::Settled)
            }),
            Record::Ignored("ok".into()),
        ];
        assert_eq!(got, want);
        // the WebSocket trade is the REST trade of the same id
        assert_eq!(got[6], document(TRADES_CURRENT)[1]);
    }

    #[test]
    fn legacy_websocket_log_converts_to_the_same_protos_as_the_current_one() {
        let current = lines(WS_CURRENT);
        let legacy = lines(WS_LEGACY);
        assert_eq!(legacy.len(), 9, "{legacy:?}");
        assert_eq!(legacy[0], current[0]);
        // integer cents and contracts, wrapper form, unix-ms receive times
        assert_eq!(legacy[1], current[1]);
        assert_eq!(legacy[2], current[2]);
        // receive time `recv_ts` on the envelope itself
        assert_eq!(legacy[3], Record::Delta(delta(3, "2025-11-25T14:03:08.004Z", Side::No, 700_000, 1300)));
        // legacy trade with `ts` in seconds
        assert_eq!(legacy[4], current[6]);
        // no receive time: the delta's own ts
        assert_eq!(legacy[5], Record::Delta(delta(4, "2025-11-25T14:03:09.517Z", Side::Yes, 290_000, 500)));
        assert_eq!(legacy[6], Record::Ignored("ticker".into()));
        // a REST trade object on a line
        assert_eq!(legacy[7], document(TRADES_LEGACY)[2]);
        assert_eq!(legacy[8], current[11]);
    }

    /// A trade line with `msg` fields replaced (null removes one).
    fn trade_line(changes: &[(&str, Value)]) -> String {
        let mut line: Value = serde_json::from_str(WS_CURRENT.lines().nth(3).expect("trade line")).expect("JSON");
        let msg = line["msg"].as_object_mut().expect("msg");
        for (key, value) in changes {
            match value {
                Value::Null => msg.remove(*key),
                v => msg.insert((*key).to_owned(), v.clone()),
            };
        }
        line.to_string()
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).expect("JSON")
    }

    #[test]
    fn trade_errors_name_the_field() {
        let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
            (vec![("trade_id", Value::Null)], "msg.trade_id: is required"),
            (vec![("market_ticker", json("7"))], "msg.market_ticker: must be a string, got a number"),
            (
                vec![("yes_price_dollars", json(r#""0.29000001""#))],
                r#"msg.yes_price_dollars: "0.29000001" has more than 6 decimals"#,
            ),
            (
                vec![("yes_price_dollars", json(r#""0.29 ""#))],
                r#"msg.yes_price_dollars: "0.29 " is not a plain decimal"#,
            ),
            (vec![("yes_price_dollars", json("true"))], "msg.yes_price_dollars: must be a decimal string or number"),
            (vec![("yes_price_dollars", Value::Null)], "msg.yes_price_dollars: is required"),
            (vec![("yes_price", json("30"))], r#"msg.yes_price: 30 disagrees with yes_price_dollars "0.2900""#),
            (vec![("yes_price", json("29.5"))], "msg.yes_price: must be an integer, got 29.5"),
            (vec![("yes_price", json(r#""29""#))], "msg.yes_price: must be an integer, got a string"),
            (vec![("no_price_dollars", json(r#""0.7200""#))], r#"msg.no_price_dollars: "0.7200" is not 1 - yes price"#),
            (
                vec![("no_price_dollars", Value::Null), ("no_price", json("70"))],
                "msg.no_price: 70 is not 1 - yes price",
            ),
            (vec![("count", json("12"))], r#"msg.count: 12 disagrees with count_fp "12.34""#),
            (vec![("count_fp", json(r#""12.345""#))], r#"msg.count_fp: "12.345" has more than 2 decimals"#),
            (vec![("count_fp", Value::Null)], "msg.count_fp: is required"),
            (
                vec![("count", json("9223372036854775807")), ("count_fp", Value::Null)],
                "msg.count: \"9223372036854775807 contracts\" is out of range",
            ),
            (
                vec![("taker_side", json(r#""maybe""#))],
                r#"msg.taker_side: unknown side "maybe" (expected "yes" or "no")"#,
            ),
            (
                vec![("taker_side", Value::Null)],
                "msg.taker_side: is required (or taker_outcome_side, or taker_book_side)",
            ),
            (
                vec![("taker_book_side", json(r#""yes""#))],
                r#"msg.taker_book_side: unknown side "yes" (expected "bid" or "ask")"#,
            ),
            (
                vec![("taker_outcome_side", json(r#""no""#))],
                r#"msg.taker_side: "yes" disagrees with taker_outcome_side "no""#,
            ),
            (
                vec![("taker_outcome_side", json(r#""yes""#)), ("taker_book_side", json(r#""ask""#))],
                r#"msg.taker_book_side: "ask" disagrees with taker_outcome_side "yes""#,
            ),
            (vec![("ts_ms", Value::Null), ("ts", Value::Null)], "msg.ts: is required (or ts_ms, or created_time)"),
            (vec![("ts_ms", json(r#""1764079387123""#))], "msg.ts_ms: must be an integer, got a string"),
            (
                vec![
                    ("ts_ms", Value::Null),
                    ("ts", Value::Null),
                    ("created_time", json(r#""2025-11-25T14:03:07.123456789Z""#)),
                ],
                "msg.created_time: \"2025-11-25T14:03:07.123456789Z\" has digits below a microsecond",
            ),
            (
                vec![("ts_ms", Value::Null), ("ts", Value::Null), ("created_time", json(r#""2025-11-25 14:03:07""#))],
                "msg.created_time: \"2025-11-25 14:03:07\" is not an RFC3339 time",
            ),
        ];
        for (changes, want) in cases {
            let line = trade_line(&changes);
            let got = line_error(&line);
            assert!(got.starts_with(want), "{changes:?}:\n got {got}\nwant {want}");
        }
        // without ts_ms, ts in seconds; without both, created_time
        let got = trades(&parse_line(&trade_line(&[("ts_ms", Value::Null)])).expect("ts"));
        assert_eq!(got[0].time, Some(Timestamp { seconds: 1_764_079_387, nanos: 0 }));
        let line = trade_line(&[
            ("ts_ms", Value::Null),
            ("ts", Value::Null),
            ("created_time", json(r#""2025-11-25T14:03:07.5Z""#)),
        ]);
        assert_eq!(trades(&parse_line(&line).expect("created_time"))[0].time, ts("2025-11-25T14:03:07.500Z"));
    }

    /// Kalshi's current direction fields, alone or beside the deprecated `taker_side`, and a REST trade with
    /// only the book vocabulary, as Kalshi sends them since it deprecated `taker_side`.
    #[test]
    fn trade_direction_from_any_of_kalshis_three_fields() {
        let side = |changes: &[(&str, Value)]| trades(&parse_line(&trade_line(changes)).expect("trade"))[0].taker_side;
        let without_legacy = ("taker_side", Value::Null);
        let cases = [
            (vec![without_legacy.clone(), ("taker_outcome_side", json(r#""no""#))], Side::No),
            (vec![without_legacy.clone(), ("taker_outcome_side", json(r#""yes""#))], Side::Yes),
            (vec![without_legacy.clone(), ("taker_book_side", json(r#""ask""#))], Side::No),
            (vec![without_legacy.clone(), ("taker_book_side", json(r#""bid""#))], Side::Yes),
            (vec![("taker_outcome_side", json(r#""yes""#)), ("taker_book_side", json(r#""bid""#))], Side::Yes),
            (vec![("is_block_trade", json("true"))], Side::Yes),
        ];
        for (changes, want) in cases {
            assert_eq!(side(&changes), want as i32, "{changes:?}");
        }
        let page = json(
            r#"{"trades":[{"trade_id":"t","ticker":"M","created_time":"2026-05-14T09:30:00.25Z",
                "yes_price_dollars":"0.4200","no_price_dollars":"0.5800","count_fp":"3.00",
                "taker_outcome_side":"no","taker_book_side":"ask","is_block_trade":false}],"cursor":""}"#,
        );
        let got = trades(&parse_document(&page).expect("page"));
        assert_eq!(got, [trade("t", "M", "2026-05-14T09:30:00.25Z", 420_000, 580_000, 300, Side::No)]);
    }

    #[test]
    fn websocket_line_errors_name_the_field() {
        let snapshot = r#""type":"orderbook_snapshot","sid":1,"seq":1"#;
        let delta = r#""type":"orderbook_delta","sid":1,"seq":2"#;
        let book = r#""market_ticker":"M""#;
        let lifecycle = r#""type":"market_lifecycle_v2","sid":3"#;
        let at = r#""received_at":"2025-11-25T14:03:07.123Z""#;
        let px = r#""price_dollars":"0.2800""#;
        let fp = r#""delta_fp":"-20.00""#;
        let settled = r#""event_type":"settled""#;
        let cases = [
            ("{", "json: EOF while parsing"),
            ("7", "json: expected a JSON object or array"),
            (r#"{"type":5}"#, "type: must be a string, got a number"),
            (&format!("{{{snapshot},{at}}}"), "msg: is required"),
            (&format!(r#"{{{snapshot},{at},"msg":5}}"#), "msg: must be an object, got a number"),
            (
                &format!(r#"{{{snapshot},"msg":{{{book}}}}}"#),
                "received_at: is required: an orderbook snapshot carries no exchange time",
            ),
            (&format!(r#"{{"type":"orderbook_snapshot","seq":1,{at},"msg":{{{book}}}}}"#), "sid: is required"),
            (
                &format!(r#"{{{snapshot},{at},"msg":{{{book},"yes":[[8,300],[8,20]]}}}}"#),
                "msg.yes: price 80000 micros appears twice",
            ),
            (
                &format!(
                    r#"{{{snapshot},{at},"msg":{{{book},"yes_dollars_fp":[["0.0800","300.00"]],"yes":[[8,301]]}}}}"#
                ),
                "msg.yes: disagrees with yes_dollars_fp",
            ),
            (
                &format!(r#"{{{snapshot},{at},"msg":{{{book},"no_dollars":[["0.08",300,1]]}}}}"#),
                "msg.no_dollars[0]: must be a [price, count] pair",
            ),
            (
                &format!(r#"{{{snapshot},{at},"msg":{{{book},"no_dollars_fp":[["0.0800","1.001"]]}}}}"#),
                r#"msg.no_dollars_fp[0][1]: "1.001" has more than 2 decimals"#,
            ),
            (
                &format!(r#"{{{snapshot},{at},"msg":{{{book},"no":[[8.5,3]]}}}}"#),
                "msg.no[0][0]: must be an integer, got 8.5",
            ),
            (&format!(r#"{{{snapshot},{at},"msg":{{{book},"no":{{}}}}}}"#), "msg.no: must be an array, got an object"),
            (
                &format!(r#"{{{delta},"msg":{{{book},"price_dollars":"0.2800","delta_fp":"-20.00","side":"yes"}}}}"#),
                "msg.ts: is required when the line has no receive time",
            ),
            (
                &format!(r#"{{{delta},{at},"msg":{{{book},{px},"price":29,{fp},"side":"yes"}}}}"#),
                r#"msg.price: 29 disagrees with price_dollars "0.2800""#,
            ),
            (
                &format!(r#"{{{delta},{at},"msg":{{{book},{px},{fp},"delta":20,"side":"yes"}}}}"#),
                r#"msg.delta: 20 disagrees with delta_fp "-20.00""#,
            ),
            (
                &format!(
                    r#"{{{delta},{at},"msg":{{{book},"price_dollars":"0.2800","delta_fp":"-20.00","side":"both"}}}}"#
                ),
                r#"msg.side: unknown side "both""#,
            ),
            (
                &format!(r#"{{{delta},{at},"msg":{{{book},"delta_fp":"-20.00","side":"yes"}}}}"#),
                "msg.price_dollars: is required",
            ),
            (
                &format!(r#"{{{lifecycle},"msg":{{{book},"event_type":"settled"}}}}"#),
                "received_at: is required: a market lifecycle event carries no exchange time",
            ),
            (
                &format!(r#"{{{lifecycle},{at},"msg":{{{book},"event_type":"paused"}}}}"#),
                r#"msg.event_type: unknown event type "paused""#,
            ),
            (
                &format!(r#"{{{lifecycle},{at},"msg":{{{book},"event_type":"activated","is_deactivated":true}}}}"#),
                "msg.is_deactivated: is true for an activated event",
            ),
            (
                &format!(r#"{{{lifecycle},{at},"msg":{{{book},"event_type":"determined","result":"maybe"}}}}"#),
                r#"msg.result: unknown result "maybe""#,
            ),
            (
                &format!(r#"{{{lifecycle},{at},"msg":{{{book},"event_type":"determined","settlement_value":50}}}}"#),
                "msg.settlement_value: must be a fixed-point dollars string, got a number",
            ),
            (
                &format!(r#"{{{lifecycle},{at},"msg":{{{book},"event_type":"settled","settled_ts":"1764163961"}}}}"#),
                "msg.settled_ts: must be an integer, got a string",
            ),
            (
                &format!(r#"{{{lifecycle},"received_at":true,"msg":{{{book},"event_type":"settled"}}}}"#),
                "received_at: must be an RFC3339 string or unix milliseconds, got a boolean",
            ),
            (
                &format!(r#"{{{lifecycle},{at},"recv_ts":1,"msg":{{{book},{settled}}}}}"#),
                "recv_ts: disagrees with received_at",
            ),
            (
                &format!(r#"{{"received_at":1,"message":{{{lifecycle},"recv_ts":2,"msg":{{{book},{settled}}}}}}}"#),
                "message.recv_ts: disagrees with received_at",
            ),
            (
                &format!(
                    r#"{{{at},"message":{{"type":"trade","msg":{{{book},"ts":1,"yes_price_dollars":"0.29000001"}}}}}}"#
                ),
                r#"message.msg.yes_price_dollars: "0.29000001" has more than 6 decimals"#,
            ),
        ];
        for (line, want) in cases {
            let got = line_error(line);
            assert!(got.starts_with(want), "{line}:\n got {got}\nwant {want}");
        }
    }

    #[test]
    fn snapshot_levels_are_sorted_and_sides_may_be_absent() {
        let line = r#"{"received_at":1764079387123,"type":"orderbook_snapshot","sid":7,"seq":40,
            "msg":{"market_ticker":"M","yes_dollars_fp":[["0.5500","1.50"],["0.0100","2.00"],["0.3000","0.01"]],
            "yes_dollars":[["0.30","0.01"],["0.5500","1.50"],["0.0100",2]],"no":null}}"#
            .replace('\n', "");
        let Record::Snapshot(s) = &parse_line(&line).expect("snapshot")[0] else { panic!() };
        let prices: Vec<(i64, i64)> = s.yes_bids.iter().map(|l| (l.price_micros, l.size_centi)).collect();
        assert_eq!(prices, [(10_000, 200), (300_000, 1), (550_000, 150)]);
        assert!(s.no_bids.is_empty());
        assert_eq!((s.sid, s.seq, s.time), (7, 40, ts("2025-11-25T14:03:07.123Z")));
    }

    #[test]
    fn delta_times_without_a_receive_time() {
        let delta = |ts: &str| {
            let msg = format!(r#"{{"market_ticker":"M","price":28,"delta":-1,"side":"no",{ts}}}"#);
            let line = format!(r#"{{"type":"orderbook_delta","sid":1,"seq":2,"msg":{msg}}}"#);
            match &parse_line(&line).expect("delta")[..] {
                [Record::Delta(d)] => d.time,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(delta(r#""ts":"2025-11-25T14:03:07.000001Z""#), ts("2025-11-25T14:03:07.000001Z"));
        assert_eq!(delta(r#""ts":1764079387"#), Some(Timestamp { seconds: 1_764_079_387, nanos: 0 }));
        assert_eq!(delta(r#""ts_ms":1764079387123"#), ts("2025-11-25T14:03:07.123Z"));
        // before the epoch, milliseconds still give nanos in 0..1e9
        assert_eq!(millis(-1), Timestamp { seconds: -1, nanos: 999_000_000 });
    }

    #[test]
    fn market_errors_name_the_field() {
        let active = r#""ticker":"M-1","event_ticker":"M","status":"active""#;
        let final_ = r#""status":"finalized","result""#;
        // the second market of a page, with these fields besides its tickers
        let second = [
            (r#""status":"paused""#, r#"status: unknown status "paused""#),
            (r#""x":1"#, "status: is required"),
            (r#""status":"active","market_type":"ternary""#, r#"market_type: unknown market type "ternary""#),
            (r#""status":"active","floor_strike":1e5"#, r#"floor_strike: "1e+5" is not a plain decimal"#),
            (r#""status":"active","cap_strike":[1]"#, "cap_strike: must be a decimal string or number, got an array"),
            (
                r#""status":"active","settlement_timer_seconds":3000000000"#,
                "settlement_timer_seconds: 3000000000 is out",
            ),
            (r#""status":"active","can_close_early":"yes""#, "can_close_early: must be a boolean, got a string"),
            (&format!(r#"{final_}:"scalar""#), r#"settlement_value_dollars: is required for result "scalar""#),
            (&format!(r#"{final_}:"void""#), r#"settlement_value_dollars: is required for result "void""#),
            (&format!(r#"{final_}:"all_no""#), r#"result: unknown result "all_no""#),
            (
                &format!(r#"{final_}:"yes","settlement_value_dollars":"0.5000""#),
                r#"settlement_value_dollars: "0.5000" contradicts result yes"#,
            ),
            (&format!(r#"{final_}:"no","settlement_value":100"#), "settlement_value: 100 contradicts result no"),
            (
                &format!(r#"{final_}:"scalar","settlement_value_dollars":"0.6500","settlement_value":64"#),
                r#"settlement_value: 64 disagrees with settlement_value_dollars "0.6500""#,
            ),
            (r#""status":"active","updated_time":"yesterday""#, r#"updated_time: "yesterday" is not an RFC3339 time"#),
            (
                r#""status":"active","open_time":"2016-12-31T23:59:60Z""#,
                r#"open_time: "2016-12-31T23:59:60Z" is a leap"#,
            ),
        ];
        for (fields, want) in second {
            let text = format!(r#"{{"markets":[{{{active}}},{{"ticker":"M-2","event_ticker":"M",{fields}}}]}}"#);
            let got = document_error(&text);
            assert!(got.starts_with(&format!("markets[1].{want}")), "{text}:\n got {got}\nwant {want}");
        }
        let documents = [
            (r#"{"markets":{"ticker":"M-1"}}"#.to_owned(), "markets: must be an array, got an object"),
            (r#"{"events":[{"event_ticker":"E"}]}"#.to_owned(), "events[0].series_ticker: is required"),
            (r#"{"series":[{"ticker":"S","tags":["a",1]}]}"#.to_owned(), "series[0].tags[1]: must be a string"),
            (r#"{"trades":[{"trade_id":"t","ticker":"M"}]}"#.to_owned(), "trades[0].created_time: is required"),
            (r#"{"foo":1}"#.to_owned(), "json: not a Kalshi document"),
            (r#"[{"foo":1}]"#.to_owned(), "[0]: cannot tell the kind of item"),
            (r#"[5]"#.to_owned(), "[0]: must be an object, got a number"),
            (
                format!(
                    r#"{{"event":{{"event_ticker":"M","series_ticker":"S","markets":[{{{active}}}]}},
                        "markets":[{{"ticker":"M-1","event_ticker":"M","status":"closed"}}]}}"#
                ),
                "markets[0]: market M-1 disagrees with event.markets",
            ),
        ];
        for (text, want) in documents {
            let got = document_error(&text);
            assert!(got.starts_with(want), "{text}:\n got {got}\nwant {want}");
        }
    }

    #[test]
    fn documents_without_the_cursor_envelope() {
        let current = document(MARKETS_CURRENT);
        let page: Value = json(MARKETS_CURRENT);
        let first = &page["markets"][0];
        // one item, GetMarketResponse, a bare array
        assert_eq!(parse_document(first).expect("item"), current[..1]);
        assert_eq!(parse_document(&serde_json::json!({ "market": first })).expect("GetMarketResponse"), current[..1]);
        assert_eq!(parse_document(&page["markets"]).expect("array"), current);
        // GetEventResponse: top-level markets that repeat the nested ones are not repeated
        let event = serde_json::json!({
            "event": {"event_ticker": "KXBTCD-25NOV2517", "series_ticker": "KXBTCD", "markets": [first]},
            "markets": [first, &page["markets"][2]],
        });
        let got = parse_document(&event).expect("GetEventResponse");
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!((&got[1], &got[2..]), (&current[0], &current[3..]));
        // GetSeriesResponse, a bare series, a bare event, a mixed array, an empty page, null arrays
        let series = json(SERIES);
        let one = parse_document(&serde_json::json!({ "series": &series["series"][0] })).expect("GetSeriesResponse");
        assert_eq!(one, document(SERIES)[..1]);
        assert_eq!(parse_document(&series["series"][0]).expect("series item"), one);
        let event = json(EVENTS)["events"][1].clone();
        assert!(matches!(&parse_document(&event).expect("event item")[..], [Record::Event(_)]));
        let trade = json(TRADES_LEGACY)[0].clone();
        let mixed = parse_document(&serde_json::json!([trade, first])).expect("mixed");
        assert!(matches!(&mixed[..], [Record::Trade(_), Record::Market(_)]), "{mixed:?}");
        assert_eq!(parse_document(&json(r#"{"cursor":""}"#)).expect("empty page"), []);
        assert_eq!(parse_document(&json(r#"{"markets":null,"cursor":""}"#)).expect("null"), []);
        // a REST page on one line of a log, blank lines
        assert_eq!(parse_line(&page.to_string()).expect("page line"), current);
        assert_eq!(parse_line("  \t").expect("blank"), []);
    }

    #[test]
    fn json_numbers_keep_their_exact_text() {
        let value = json(
            r#"{"ticker":"M-1","event_ticker":"M","status":"active","floor_strike":-0.10,
            "cap_strike":123456789012345678901234567890.123456789}"#,
        );
        let Record::Market(m) = &parse_document(&value).expect("market")[0] else { panic!() };
        assert_eq!(
            (m.floor_strike.as_str(), m.cap_strike.as_str()),
            ("-0.10", "123456789012345678901234567890.123456789")
        );
        // a market without series_ticker and an event ticker without '-'
        assert_eq!(m.series_ticker, "M");
        // a dollars field given as a number is exact too
        let line = trade_line(&[("yes_price_dollars", json("0.29")), ("no_price_dollars", json("0.71"))]);
        assert_eq!(trades(&parse_line(&line).expect("numbers"))[0].yes_price_micros, 290_000);
    }
}
