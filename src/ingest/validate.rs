//! Validation of every item of a write before anything is written: each proto message becomes the row of its
//! table (one struct per table), or an INVALID_ARGUMENT that names the item's position and the field.

use std::fmt;

use chrono::{DateTime, Days, NaiveTime, Utc};
use prost_types::Timestamp;
use rust_decimal::Decimal;

use crate::{
    decimal,
    error::Error,
    limits::Limits,
    proto::{self, LifecycleEventType, MarketStatus, MarketType, SettlementResult, Side},
    time,
};

/// The bounds a write's items are checked against, fixed when the write starts: values past them would break
/// later writes (a count that overflows a day's sums), create partitions without end (a fact dated far away), or
/// freeze a reference row (an updated_time in the future wins over every real update until then).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The time of the write: an unset updated_time.
    pub now: DateTime<Utc>,
    max_count_centi: i64,
    /// Facts are dated in [earliest_fact, facts_before).
    earliest_fact: DateTime<Utc>,
    facts_before: DateTime<Utc>,
    /// The latest updated_time a reference row may carry.
    latest_update: DateTime<Utc>,
}

impl Bounds {
    /// The bounds of `limits` for a write at `now`: facts up to the end of the UTC day `max_fact_days_ahead`
    /// days after today (the partitions the server keeps ahead), reference rows updated up to
    /// `max_updated_time_skew` after now.
    pub fn new(limits: &Limits, now: DateTime<Utc>) -> Self {
        let last_day = now.date_naive().checked_add_days(Days::new(u64::from(limits.max_fact_days_ahead)));
        let after = last_day.and_then(|d| d.succ_opt()).map(|d| d.and_time(NaiveTime::MIN).and_utc());
        let skew = chrono::Duration::from_std(limits.max_updated_time_skew).unwrap_or(chrono::Duration::MAX);
        Self {
            now,
            max_count_centi: limits.max_count_centi,
            earliest_fact: limits.earliest_fact,
            facts_before: after.unwrap_or(DateTime::<Utc>::MAX_UTC),
            latest_update: now.checked_add_signed(skew).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// A count or size: above 0 and at most max_count_centi.
    fn count(&self, at: At, name: &str, centi: i64) -> Result<i64, Error> {
        let max = self.max_count_centi;
        if (1..=max).contains(&centi) {
            Ok(centi)
        } else {
            Err(at.invalid(name, format!("must be between 1 and {max} (max_count_centi), got {centi}")))
        }
    }

    /// A fact's time, which picks its daily partition.
    fn fact_time(&self, at: At, name: &str, value: Option<&Timestamp>) -> Result<DateTime<Utc>, Error> {
        let ts = required_time(at, name, value)?;
        if ts < self.earliest_fact || ts >= self.facts_before {
            return Err(at.invalid(
                name,
                format!(
                    "must be from {} (earliest_fact) to before {} (max_fact_days_ahead after today), got {ts}",
                    self.earliest_fact.to_rfc3339(),
                    self.facts_before.to_rfc3339()
                ),
            ));
        }
        Ok(ts)
    }

    /// A reference row's updated_time; unset is `now`.
    fn updated(&self, at: At, value: Option<&Timestamp>) -> Result<DateTime<Utc>, Error> {
        let Some(updated) = optional_time(at, "updated_time", value)? else {
            return Ok(self.now);
        };
        if updated > self.latest_update {
            return Err(at.invalid(
                "updated_time",
                format!(
                    "must be at most max_updated_time_skew after the server's time ({}), got {}",
                    self.latest_update.to_rfc3339(),
                    updated.to_rfc3339()
                ),
            ));
        }
        Ok(updated)
    }
}

/// Where an item sits in a request, for error messages: `trades[3]` for the fourth trade of a request, or the
/// bare kind (`trade`) when the caller gives the position itself (the importer's file and line).
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub kind: &'static str,
    pub index: Option<usize>,
}

impl At {
    /// The item `index` of the request's list `kind`.
    pub fn item(kind: &'static str, index: usize) -> Self {
        Self { kind, index: Some(index) }
    }

    fn field(self, name: &str) -> String {
        format!("{self}.{name}")
    }

    fn invalid(self, name: &str, reason: impl Into<String>) -> Error {
        Error::invalid(self.field(name), reason)
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]", self.kind),
            None => f.write_str(self.kind),
        }
    }
}

/// A required text field: not empty, no NUL (PostgreSQL's text cannot hold one), at most 256 bytes.
fn key_text(at: At, name: &str, value: &str) -> Result<String, Error> {
    if value.is_empty() {
        return Err(at.invalid(name, "is required"));
    }
    if value.len() > 256 {
        return Err(at.invalid(name, format!("must be at most 256 bytes, got {}", value.len())));
    }
    free_text(at, name, value)
}

/// An optional text field: no NUL.
fn free_text(at: At, name: &str, value: &str) -> Result<String, Error> {
    if value.contains('\0') {
        return Err(at.invalid(name, "must not contain NUL"));
    }
    Ok(value.to_owned())
}

fn required_time(at: At, name: &str, value: Option<&Timestamp>) -> Result<DateTime<Utc>, Error> {
    match value {
        Some(t) => time::from_proto(t, name).map_err(|e| e.with_field(at.field(name))),
        None => Err(at.invalid(name, "is required")),
    }
}

fn optional_time(at: At, name: &str, value: Option<&Timestamp>) -> Result<Option<DateTime<Utc>>, Error> {
    value.map(|t| time::from_proto(t, name).map_err(|e| e.with_field(at.field(name)))).transpose()
}

/// A price strictly inside (0, 1 USD).
fn price(at: At, name: &str, micros: i64) -> Result<i64, Error> {
    if (1..=999_999).contains(&micros) {
        Ok(micros)
    } else {
        Err(at.invalid(name, format!("must be between 1 and 999999, got {micros}")))
    }
}

fn side(at: At, name: &str, value: i32) -> Result<i16, Error> {
    match Side::try_from(value) {
        Ok(Side::Yes) => Ok(1),
        Ok(Side::No) => Ok(2),
        _ => Err(at.invalid(name, format!("must be SIDE_YES (1) or SIDE_NO (2), got {value}"))),
    }
}

/// A settlement value: 0 to 1 USD inclusive.
fn payout(at: At, name: &str, micros: i64) -> Result<i64, Error> {
    if (0..=1_000_000).contains(&micros) {
        Ok(micros)
    } else {
        Err(at.invalid(name, format!("must be between 0 and 1000000, got {micros}")))
    }
}

fn non_negative(at: At, name: &str, value: i64) -> Result<i64, Error> {
    if value >= 0 { Ok(value) } else { Err(at.invalid(name, format!("must be 0 or more, got {value}"))) }
}

/// A result code other than unspecified (1 yes, 2 no, 3 scalar, 4 void).
fn result_code(at: At, name: &str, value: i32) -> Result<i16, Error> {
    match SettlementResult::try_from(value) {
        Ok(r) if r != SettlementResult::Unspecified => Ok(value as i16),
        _ => {
            Err(at.invalid(name, format!("must be SETTLEMENT_RESULT_YES, _NO, _SCALAR or _VOID (1 to 4), got {value}")))
        }
    }
}

/// An exact decimal string (a strike), or empty for none.
fn strike(at: At, name: &str, value: &str) -> Result<Option<Decimal>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    let plain = decimal::check_plain(value).map_err(|e| at.invalid(name, e.to_string()));
    match Decimal::from_str_exact(plain?) {
        Ok(d) => Ok(Some(d)),
        Err(_) => Err(at.invalid(name, format!("must have at most 28 significant digits, got {value:?}"))),
    }
}

/// A trade as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRow {
    pub ts: DateTime<Utc>,
    pub ticker: String,
    pub trade_id: String,
    pub yes_price_micros: i64,
    pub count_centi: i64,
    pub taker_side: i16,
}

/// Checks one trade.
pub fn trade(at: At, bounds: &Bounds, trade: &proto::Trade) -> Result<TradeRow, Error> {
    let ticker = key_text(at, "market_ticker", &trade.market_ticker)?;
    let trade_id = key_text(at, "trade_id", &trade.trade_id)?;
    let ts = bounds.fact_time(at, "time", trade.time.as_ref())?;
    let yes = price(at, "yes_price_micros", trade.yes_price_micros)?;
    let no = trade.no_price_micros;
    if no != 0 && no != 1_000_000 - yes {
        return Err(at.invalid(
            "no_price_micros",
            format!("must be 0 (derived) or 1000000 - yes_price_micros = {}, got {no}", 1_000_000 - yes),
        ));
    }
    let count_centi = bounds.count(at, "count_centi", trade.count_centi)?;
    let taker_side = side(at, "taker_side", trade.taker_side)?;
    Ok(TradeRow { ts, ticker, trade_id, yes_price_micros: yes, count_centi, taker_side })
}

/// An order-book snapshot as stored: parallel arrays per side, ascending price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub ts: DateTime<Utc>,
    pub ticker: String,
    pub sid: i64,
    pub seq: i64,
    pub yes_price_micros: Vec<i64>,
    pub yes_size_centi: Vec<i64>,
    pub no_price_micros: Vec<i64>,
    pub no_size_centi: Vec<i64>,
}

/// Checks one snapshot: every level's price and size, and prices strictly ascending per side.
pub fn snapshot(at: At, bounds: &Bounds, snapshot: &proto::OrderbookSnapshot) -> Result<SnapshotRow, Error> {
    let ticker = key_text(at, "market_ticker", &snapshot.market_ticker)?;
    let ts = bounds.fact_time(at, "time", snapshot.time.as_ref())?;
    let sid = non_negative(at, "sid", snapshot.sid)?;
    let seq = non_negative(at, "seq", snapshot.seq)?;
    let levels = |name: &str, levels: &[proto::OrderbookLevel]| -> Result<(Vec<i64>, Vec<i64>), Error> {
        let mut prices = Vec::with_capacity(levels.len());
        let mut sizes = Vec::with_capacity(levels.len());
        for (i, level) in levels.iter().enumerate() {
            // the level's field path is spelled out only for an error
            let path = |field: &str| at.field(&format!("{name}[{i}].{field}"));
            let p = price(at, "", level.price_micros).map_err(|e| e.with_field(path("price_micros")))?;
            if prices.last().is_some_and(|&last| last >= p) {
                return Err(Error::invalid(path("price_micros"), "must be above the previous level's"));
            }
            prices.push(p);
            sizes.push(bounds.count(at, "", level.size_centi).map_err(|e| e.with_field(path("size_centi")))?);
        }
        Ok((prices, sizes))
    };
    let (yes_price_micros, yes_size_centi) = levels("yes_bids", &snapshot.yes_bids)?;
    let (no_price_micros, no_size_centi) = levels("no_bids", &snapshot.no_bids)?;
    Ok(SnapshotRow { ts, ticker, sid, seq, yes_price_micros, yes_size_centi, no_price_micros, no_size_centi })
}

/// An order-book delta as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRow {
    pub ts: DateTime<Utc>,
    pub ticker: String,
    pub sid: i64,
    pub seq: i64,
    pub side: i16,
    pub price_micros: i64,
    pub delta_centi: i64,
}

/// Checks one delta.
pub fn delta(at: At, bounds: &Bounds, delta: &proto::OrderbookDelta) -> Result<DeltaRow, Error> {
    let ticker = key_text(at, "market_ticker", &delta.market_ticker)?;
    let ts = bounds.fact_time(at, "time", delta.time.as_ref())?;
    let sid = non_negative(at, "sid", delta.sid)?;
    let seq = non_negative(at, "seq", delta.seq)?;
    let side = side(at, "side", delta.side)?;
    let price_micros = price(at, "price_micros", delta.price_micros)?;
    let max = bounds.max_count_centi;
    if delta.delta_centi == 0 || delta.delta_centi.unsigned_abs() > max.unsigned_abs() {
        return Err(at.invalid(
            "delta_centi",
            format!("must not be 0 and at most {max} (max_count_centi) either way, got {}", delta.delta_centi),
        ));
    }
    Ok(DeltaRow { ts, ticker, sid, seq, side, price_micros, delta_centi: delta.delta_centi })
}

/// A market lifecycle event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRow {
    pub ts: DateTime<Utc>,
    pub ticker: String,
    pub event_type: i16,
    pub open_time: Option<DateTime<Utc>>,
    pub close_time: Option<DateTime<Utc>>,
    pub result: Option<i16>,
    pub settlement_value_micros: Option<i64>,
    pub determined_time: Option<DateTime<Utc>>,
    pub settled_time: Option<DateTime<Utc>>,
}

/// Checks one lifecycle event.
pub fn lifecycle(at: At, bounds: &Bounds, event: &proto::LifecycleEvent) -> Result<LifecycleRow, Error> {
    let ticker = key_text(at, "market_ticker", &event.market_ticker)?;
    let ts = bounds.fact_time(at, "time", event.time.as_ref())?;
    let event_type = match LifecycleEventType::try_from(event.event_type) {
        Ok(t) if t != LifecycleEventType::Unspecified => event.event_type as i16,
        _ => {
            return Err(at.invalid(
                "event_type",
                format!("must be one of LIFECYCLE_EVENT_TYPE_CREATED .. _SETTLED (1 to 6), got {}", event.event_type),
            ));
        }
    };
    let result = match event.result {
        0 => None,
        r => Some(result_code(at, "result", r)?),
    };
    let settlement_value_micros =
        event.settlement_value_micros.map(|v| payout(at, "settlement_value_micros", v)).transpose()?;
    Ok(LifecycleRow {
        ts,
        ticker,
        event_type,
        open_time: optional_time(at, "open_time", event.open_time.as_ref())?,
        close_time: optional_time(at, "close_time", event.close_time.as_ref())?,
        result,
        settlement_value_micros,
        determined_time: optional_time(at, "determined_time", event.determined_time.as_ref())?,
        settled_time: optional_time(at, "settled_time", event.settled_time.as_ref())?,
    })
}

/// One of Kalshi's candles as stored (table kalshi_candles, migration 0010).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KalshiCandleRow {
    pub end_ts: DateTime<Utc>,
    pub ticker: String,
    pub period_minutes: i16,
    /// YES bid and ask, each open, low, high, close (the table's column order).
    pub yes_bid: [i64; 4],
    pub yes_ask: [i64; 4],
    /// Traded price: open, low, high, close, mean, previous; None for a period without trades.
    pub price: [Option<i64>; 6],
    pub volume_centi: i64,
    pub open_interest_centi: i64,
}

/// A price of a Kalshi candle: 0 to 1 USD inclusive (a side without orders is quoted 0, or 1 USD for an ask).
fn quote(at: At, name: &str, micros: i64) -> Result<i64, Error> {
    if (0..=1_000_000).contains(&micros) {
        Ok(micros)
    } else {
        Err(at.invalid(name, format!("must be between 0 and 1000000, got {micros}")))
    }
}

/// Checks one of Kalshi's candles: a market, a period Kalshi serves, an end time in the fact bounds, prices of
/// 0 to 1 USD, counts of 0 or more. The market need not have a reference row yet (a fact like the others: the
/// write counts such markets as unreferenced).
pub fn kalshi_candle(at: At, bounds: &Bounds, candle: &proto::KalshiCandle) -> Result<KalshiCandleRow, Error> {
    let ticker = key_text(at, "market_ticker", &candle.market_ticker)?;
    let period_minutes = match candle.period_minutes {
        p @ (1 | 60 | 1440) => p as i16,
        p => return Err(at.invalid("period_minutes", format!("must be 1, 60 or 1440, got {p}"))),
    };
    let end_ts = bounds.fact_time(at, "end_time", candle.end_time.as_ref())?;
    let c = candle;
    let yes_bid = [
        quote(at, "yes_bid_open_micros", c.yes_bid_open_micros)?,
        quote(at, "yes_bid_low_micros", c.yes_bid_low_micros)?,
        quote(at, "yes_bid_high_micros", c.yes_bid_high_micros)?,
        quote(at, "yes_bid_close_micros", c.yes_bid_close_micros)?,
    ];
    let yes_ask = [
        quote(at, "yes_ask_open_micros", c.yes_ask_open_micros)?,
        quote(at, "yes_ask_low_micros", c.yes_ask_low_micros)?,
        quote(at, "yes_ask_high_micros", c.yes_ask_high_micros)?,
        quote(at, "yes_ask_close_micros", c.yes_ask_close_micros)?,
    ];
    let optional = |name: &str, v: Option<i64>| v.map(|v| quote(at, name, v)).transpose();
    let price = [
        optional("price_open_micros", c.price_open_micros)?,
        optional("price_low_micros", c.price_low_micros)?,
        optional("price_high_micros", c.price_high_micros)?,
        optional("price_close_micros", c.price_close_micros)?,
        optional("price_mean_micros", c.price_mean_micros)?,
        optional("price_previous_micros", c.price_previous_micros)?,
    ];
    Ok(KalshiCandleRow {
        end_ts,
        ticker,
        period_minutes,
        yes_bid,
        yes_ask,
        price,
        volume_centi: non_negative(at, "volume_centi", c.volume_centi)?,
        open_interest_centi: non_negative(at, "open_interest_centi", c.open_interest_centi)?,
    })
}

/// A series as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRow {
    pub ticker: String,
    pub title: String,
    pub category: String,
    pub tags: Vec<String>,
    pub frequency: String,
    pub contract_url: String,
    pub fee_type: String,
    pub updated_at: DateTime<Utc>,
}

/// Checks one series; an unset updated_time is `now`, the time of the write.
pub fn series(at: At, bounds: &Bounds, series: &proto::Series) -> Result<SeriesRow, Error> {
    let tags = series
        .tags
        .iter()
        .enumerate()
        .map(|(i, tag)| free_text(at, &format!("tags[{i}]"), tag))
        .collect::<Result<_, _>>()?;
    Ok(SeriesRow {
        ticker: key_text(at, "ticker", &series.ticker)?,
        title: free_text(at, "title", &series.title)?,
        category: free_text(at, "category", &series.category)?,
        tags,
        frequency: free_text(at, "frequency", &series.frequency)?,
        contract_url: free_text(at, "contract_url", &series.contract_url)?,
        fee_type: free_text(at, "fee_type", &series.fee_type)?,
        updated_at: bounds.updated(at, series.updated_time.as_ref())?,
    })
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub event_ticker: String,
    pub series_ticker: String,
    pub title: String,
    pub sub_title: String,
    pub category: String,
    pub mutually_exclusive: bool,
    pub strike_date: Option<DateTime<Utc>>,
    pub strike_period: String,
    pub updated_at: DateTime<Utc>,
}

/// Checks one event; an unset updated_time is `now`.
pub fn event(at: At, bounds: &Bounds, event: &proto::Event) -> Result<EventRow, Error> {
    Ok(EventRow {
        event_ticker: key_text(at, "event_ticker", &event.event_ticker)?,
        series_ticker: key_text(at, "series_ticker", &event.series_ticker)?,
        title: free_text(at, "title", &event.title)?,
        sub_title: free_text(at, "sub_title", &event.sub_title)?,
        category: free_text(at, "category", &event.category)?,
        mutually_exclusive: event.mutually_exclusive,
        strike_date: optional_time(at, "strike_date", event.strike_date.as_ref())?,
        strike_period: free_text(at, "strike_period", &event.strike_period)?,
        updated_at: bounds.updated(at, event.updated_time.as_ref())?,
    })
}

/// A market as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketRow {
    pub ticker: String,
    pub event_ticker: String,
    pub series_ticker: String,
    pub market_type: i16,
    pub title: String,
    pub yes_sub_title: String,
    pub no_sub_title: String,
    pub status: i16,
    pub open_time: Option<DateTime<Utc>>,
    pub close_time: Option<DateTime<Utc>>,
    pub expected_expiration_time: Option<DateTime<Utc>>,
    pub latest_expiration_time: Option<DateTime<Utc>>,
    pub settlement_timer_seconds: Option<i32>,
    pub can_close_early: bool,
    pub strike_type: String,
    pub floor_strike: Option<Decimal>,
    pub cap_strike: Option<Decimal>,
    pub rules_primary: String,
    pub rules_secondary: String,
    pub updated_at: DateTime<Utc>,
}

/// Checks one market; an unset market_type is binary, an unset updated_time is `now`.
pub fn market(at: At, bounds: &Bounds, market: &proto::Market) -> Result<MarketRow, Error> {
    let market_type = match MarketType::try_from(market.market_type) {
        Ok(MarketType::Unspecified | MarketType::Binary) => 1,
        Ok(MarketType::Scalar) => 2,
        Err(_) => {
            return Err(at.invalid(
                "market_type",
                format!("must be MARKET_TYPE_BINARY (1) or MARKET_TYPE_SCALAR (2), got {}", market.market_type),
            ));
        }
    };
    let status = match MarketStatus::try_from(market.status) {
        Ok(s) if s != MarketStatus::Unspecified => market.status as i16,
        _ => {
            return Err(at.invalid(
                "status",
                format!("must be one of MARKET_STATUS_INITIALIZED .. _FINALIZED (1 to 8), got {}", market.status),
            ));
        }
    };
    if market.settlement_timer_seconds < 0 {
        return Err(at.invalid(
            "settlement_timer_seconds",
            format!("must be 0 or more, got {}", market.settlement_timer_seconds),
        ));
    }
    Ok(MarketRow {
        ticker: key_text(at, "ticker", &market.ticker)?,
        event_ticker: key_text(at, "event_ticker", &market.event_ticker)?,
        series_ticker: key_text(at, "series_ticker", &market.series_ticker)?,
        market_type,
        title: free_text(at, "title", &market.title)?,
        yes_sub_title: free_text(at, "yes_sub_title", &market.yes_sub_title)?,
        no_sub_title: free_text(at, "no_sub_title", &market.no_sub_title)?,
        status,
        open_time: optional_time(at, "open_time", market.open_time.as_ref())?,
        close_time: optional_time(at, "close_time", market.close_time.as_ref())?,
        expected_expiration_time: optional_time(
            at,
            "expected_expiration_time",
            market.expected_expiration_time.as_ref(),
        )?,
        latest_expiration_time: optional_time(at, "latest_expiration_time", market.latest_expiration_time.as_ref())?,
        settlement_timer_seconds: Some(market.settlement_timer_seconds),
        can_close_early: market.can_close_early,
        strike_type: free_text(at, "strike_type", &market.strike_type)?,
        floor_strike: strike(at, "floor_strike", &market.floor_strike)?,
        cap_strike: strike(at, "cap_strike", &market.cap_strike)?,
        rules_primary: free_text(at, "rules_primary", &market.rules_primary)?,
        rules_secondary: free_text(at, "rules_secondary", &market.rules_secondary)?,
        updated_at: bounds.updated(at, market.updated_time.as_ref())?,
    })
}

/// A settlement as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRow {
    pub market_ticker: String,
    pub event_ticker: String,
    pub series_ticker: String,
    pub result: i16,
    pub settlement_value_micros: i64,
    pub determined_time: Option<DateTime<Utc>>,
    pub settled_time: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Checks one settlement. A YES result pays 1 USD and a NO result nothing: their value may be left 0 (derived)
/// or must say so.
pub fn settlement(at: At, bounds: &Bounds, settlement: &proto::Settlement) -> Result<SettlementRow, Error> {
    let result = result_code(at, "result", settlement.result)?;
    let sent = payout(at, "settlement_value_micros", settlement.settlement_value_micros)?;
    let settlement_value_micros = match (SettlementResult::try_from(settlement.result), sent) {
        (Ok(SettlementResult::Yes), 0 | 1_000_000) => 1_000_000,
        (Ok(SettlementResult::Yes), v) => {
            return Err(at.invalid("settlement_value_micros", format!("must be 1000000 (or 0) for YES, got {v}")));
        }
        (Ok(SettlementResult::No), 0) => 0,
        (Ok(SettlementResult::No), v) => {
            return Err(at.invalid("settlement_value_micros", format!("must be 0 for NO, got {v}")));
        }
        (_, v) => v,
    };
    Ok(SettlementRow {
        market_ticker: key_text(at, "market_ticker", &settlement.market_ticker)?,
        event_ticker: key_text(at, "event_ticker", &settlement.event_ticker)?,
        series_ticker: key_text(at, "series_ticker", &settlement.series_ticker)?,
        result,
        settlement_value_micros,
        determined_time: optional_time(at, "determined_time", settlement.determined_time.as_ref())?,
        settled_time: optional_time(at, "settled_time", settlement.settled_time.as_ref())?,
        updated_at: bounds.updated(at, settlement.updated_time.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::validate;

    const AT: At = At { kind: "trades", index: Some(7) };

    /// The default limits on 2026-03-01, after every time these tests send.
    static B: std::sync::LazyLock<Bounds> = std::sync::LazyLock::new(|| {
        let now = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").expect("time").to_utc();
        Bounds::new(&Limits::default(), now)
    });

    fn good() -> proto::Trade {
        proto::Trade {
            trade_id: "t1".into(),
            market_ticker: "KX-A".into(),
            time: Some(Timestamp { seconds: 1_767_571_200, nanos: 5000 }),
            yes_price_micros: 290_000,
            no_price_micros: 0,
            count_centi: 1234,
            taker_side: Side::No as i32,
            ingest_seq: 77,
        }
    }

    #[test]
    fn a_good_trade_is_stored_as_sent() {
        let row = validate::trade(AT, &B, &good()).expect("valid");
        assert_eq!((row.yes_price_micros, row.count_centi, row.taker_side), (290_000, 1234, 2));
        assert_eq!(row.ts.timestamp_micros(), 1_767_571_200_000_005);
        let explicit_no = proto::Trade { no_price_micros: 710_000, ..good() };
        assert!(validate::trade(AT, &B, &explicit_no).is_ok());
    }

    fn assert_field<T: fmt::Debug>(result: Result<T, Error>, field: &str) {
        let error = result.expect_err(field).to_string();
        assert!(error.starts_with(&format!("{field}: ")), "{field}: {error}");
    }

    #[test]
    fn every_bad_trade_field_is_named_with_its_index() {
        let cases: Vec<(proto::Trade, &str)> = vec![
            (proto::Trade { market_ticker: String::new(), ..good() }, "market_ticker"),
            (proto::Trade { market_ticker: "A\0B".into(), ..good() }, "market_ticker"),
            (proto::Trade { trade_id: String::new(), ..good() }, "trade_id"),
            (proto::Trade { trade_id: "x".repeat(257), ..good() }, "trade_id"),
            (proto::Trade { time: None, ..good() }, "time"),
            (proto::Trade { time: Some(Timestamp { seconds: 0, nanos: 1 }), ..good() }, "time"),
            (proto::Trade { yes_price_micros: 0, ..good() }, "yes_price_micros"),
            (proto::Trade { yes_price_micros: 1_000_000, ..good() }, "yes_price_micros"),
            (proto::Trade { no_price_micros: 700_000, ..good() }, "no_price_micros"),
            (proto::Trade { count_centi: 0, ..good() }, "count_centi"),
            (proto::Trade { count_centi: -5, ..good() }, "count_centi"),
            (proto::Trade { taker_side: 0, ..good() }, "taker_side"),
            (proto::Trade { taker_side: 9, ..good() }, "taker_side"),
        ];
        for (trade, field) in cases {
            assert_field(validate::trade(AT, &B, &trade), &format!("trades[7].{field}"));
        }
        let bare = At { kind: "trade", index: None };
        assert_field(validate::trade(bare, &B, &proto::Trade { count_centi: 0, ..good() }), "trade.count_centi");
    }

    fn level(price_micros: i64, size_centi: i64) -> proto::OrderbookLevel {
        proto::OrderbookLevel { price_micros, size_centi }
    }

    #[test]
    fn book_fields_are_checked_level_by_level() {
        let at = At::item("snapshots", 2);
        let good = proto::OrderbookSnapshot {
            market_ticker: "KX-A".into(),
            time: Some(Timestamp { seconds: 1_767_571_200, nanos: 0 }),
            sid: 3,
            seq: 9,
            yes_bids: vec![level(10_000, 100), level(290_000, 5)],
            no_bids: vec![level(700_000, 1)],
            ingest_seq: 0,
        };
        let row = validate::snapshot(at, &B, &good).expect("valid");
        assert_eq!((row.yes_price_micros, row.yes_size_centi), (vec![10_000, 290_000], vec![100, 5]));
        let cases: Vec<(proto::OrderbookSnapshot, &str)> = vec![
            (proto::OrderbookSnapshot { market_ticker: String::new(), ..good.clone() }, "market_ticker"),
            (proto::OrderbookSnapshot { time: None, ..good.clone() }, "time"),
            (proto::OrderbookSnapshot { sid: -1, ..good.clone() }, "sid"),
            (proto::OrderbookSnapshot { seq: -1, ..good.clone() }, "seq"),
            (proto::OrderbookSnapshot { yes_bids: vec![level(0, 1)], ..good.clone() }, "yes_bids[0].price_micros"),
            (proto::OrderbookSnapshot { no_bids: vec![level(5, 0)], ..good.clone() }, "no_bids[0].size_centi"),
            (
                proto::OrderbookSnapshot { yes_bids: vec![level(5, 1), level(5, 1)], ..good.clone() },
                "yes_bids[1].price_micros",
            ),
        ];
        for (snapshot, field) in cases {
            assert_field(validate::snapshot(at, &B, &snapshot), &format!("snapshots[2].{field}"));
        }
        let delta = proto::OrderbookDelta {
            market_ticker: "KX-A".into(),
            time: Some(Timestamp { seconds: 1_767_571_200, nanos: 0 }),
            sid: 3,
            seq: 10,
            side: Side::Yes as i32,
            price_micros: 290_000,
            delta_centi: -500,
            ingest_seq: 0,
        };
        let at = At::item("deltas", 0);
        assert_eq!(validate::delta(at, &B, &delta).expect("valid").delta_centi, -500);
        let cases: Vec<(proto::OrderbookDelta, &str)> = vec![
            (proto::OrderbookDelta { side: 0, ..delta.clone() }, "side"),
            (proto::OrderbookDelta { price_micros: 1_000_000, ..delta.clone() }, "price_micros"),
            (proto::OrderbookDelta { delta_centi: 0, ..delta.clone() }, "delta_centi"),
            (proto::OrderbookDelta { time: None, ..delta.clone() }, "time"),
            (proto::OrderbookDelta { market_ticker: String::new(), ..delta.clone() }, "market_ticker"),
        ];
        for (d, field) in cases {
            assert_field(validate::delta(at, &B, &d), &format!("deltas[0].{field}"));
        }
    }

    #[test]
    fn reference_fields_are_checked() {
        let now = Utc::now();
        let b = Bounds::new(&Limits::default(), now);
        let at = At::item("markets", 1);
        let market = proto::Market {
            ticker: "KX-A".into(),
            event_ticker: "KX-E".into(),
            series_ticker: "KX".into(),
            status: MarketStatus::Active as i32,
            floor_strike: "99999.99".into(),
            ..Default::default()
        };
        let row = validate::market(at, &b, &market).expect("valid");
        assert_eq!((row.market_type, row.status, row.updated_at), (1, 3, now));
        assert_eq!(row.floor_strike.map(|d| d.to_string()).as_deref(), Some("99999.99"));
        let cases: Vec<(proto::Market, &str)> = vec![
            (proto::Market { ticker: String::new(), ..market.clone() }, "ticker"),
            (proto::Market { event_ticker: String::new(), ..market.clone() }, "event_ticker"),
            (proto::Market { series_ticker: String::new(), ..market.clone() }, "series_ticker"),
            (proto::Market { status: 0, ..market.clone() }, "status"),
            (proto::Market { status: 9, ..market.clone() }, "status"),
            (proto::Market { market_type: 3, ..market.clone() }, "market_type"),
            (proto::Market { floor_strike: "1e5".into(), ..market.clone() }, "floor_strike"),
            (proto::Market { cap_strike: "12.".into(), ..market.clone() }, "cap_strike"),
            (proto::Market { settlement_timer_seconds: -1, ..market.clone() }, "settlement_timer_seconds"),
        ];
        for (m, field) in cases {
            assert_field(validate::market(at, &b, &m), &format!("markets[1].{field}"));
        }
        let at = At::item("settlements", 0);
        let settlement = proto::Settlement {
            market_ticker: "KX-A".into(),
            event_ticker: "KX-E".into(),
            series_ticker: "KX".into(),
            result: SettlementResult::Yes as i32,
            ..Default::default()
        };
        assert_eq!(validate::settlement(at, &b, &settlement).expect("derived").settlement_value_micros, 1_000_000);
        let cases: Vec<(proto::Settlement, &str)> = vec![
            (proto::Settlement { result: 0, ..settlement.clone() }, "result"),
            (proto::Settlement { result: 5, ..settlement.clone() }, "result"),
            (proto::Settlement { settlement_value_micros: 500_000, ..settlement.clone() }, "settlement_value_micros"),
            (
                proto::Settlement {
                    result: SettlementResult::No as i32,
                    settlement_value_micros: 1,
                    ..settlement.clone()
                },
                "settlement_value_micros",
            ),
            (
                proto::Settlement { result: 3, settlement_value_micros: 1_000_001, ..settlement.clone() },
                "settlement_value_micros",
            ),
            (proto::Settlement { event_ticker: String::new(), ..settlement.clone() }, "event_ticker"),
        ];
        for (s, field) in cases {
            assert_field(validate::settlement(at, &b, &s), &format!("settlements[0].{field}"));
        }
        assert_field(validate::series(At::item("series", 4), &b, &proto::Series::default()), "series[4].ticker");
        let event = proto::Event { event_ticker: "KX-E".into(), ..Default::default() };
        assert_field(validate::event(At::item("events", 0), &b, &event), "events[0].series_ticker");
        let lifecycle = proto::LifecycleEvent {
            market_ticker: "KX-A".into(),
            time: Some(Timestamp { seconds: 1_767_571_200, nanos: 0 }),
            event_type: 9,
            ..Default::default()
        };
        let at = At::item("events", 3);
        assert_field(validate::lifecycle(at, &B, &lifecycle), "events[3].event_type");
        let bad_result = proto::LifecycleEvent { event_type: 5, result: 7, ..lifecycle.clone() };
        assert_field(validate::lifecycle(at, &B, &bad_result), "events[3].result");
        let bad_value = proto::LifecycleEvent { event_type: 5, settlement_value_micros: Some(-1), ..lifecycle };
        assert_field(validate::lifecycle(at, &B, &bad_value), "events[3].settlement_value_micros");
    }

    #[test]
    fn counts_fact_times_and_updates_past_the_limits_are_refused_naming_the_limit() {
        let max = Limits::default().max_count_centi;
        assert_eq!(
            validate::trade(AT, &B, &proto::Trade { count_centi: max, ..good() }).expect("max").count_centi,
            max
        );
        let over = validate::trade(AT, &B, &proto::Trade { count_centi: max + 1, ..good() });
        assert!(over.expect_err("over").to_string().contains("max_count_centi"));
        // Kalshi's first day is the earliest; today + 7 days (2026-03-08) is the last day a fact may carry
        let at = |s: &str| {
            let t = DateTime::parse_from_rfc3339(s).expect("time");
            Some(Timestamp { seconds: t.timestamp(), nanos: 0 })
        };
        for (time, ok) in [
            ("2021-06-30T23:59:59Z", false),
            ("2021-07-01T00:00:00Z", true),
            ("2026-03-08T23:59:59Z", true),
            ("2026-03-09T00:00:00Z", false),
            ("9999-01-01T00:00:00Z", false),
        ] {
            let trade = proto::Trade { time: at(time), ..good() };
            let checked = validate::trade(AT, &B, &trade);
            assert_eq!(checked.is_ok(), ok, "{time}: {checked:?}");
            if !ok {
                let error = checked.expect_err(time).to_string();
                assert!(error.starts_with("trades[7].time: ") && error.contains("max_fact_days_ahead"), "{error}");
            }
        }
        let delta = proto::OrderbookDelta {
            market_ticker: "KX-A".into(),
            time: at("2026-01-05T00:00:00Z"),
            sid: 1,
            seq: 1,
            side: Side::Yes as i32,
            price_micros: 1,
            delta_centi: -max - 1,
            ingest_seq: 0,
        };
        assert_field(validate::delta(At::item("deltas", 0), &B, &delta), "deltas[0].delta_centi");
        let level = proto::OrderbookLevel { price_micros: 5, size_centi: max + 1 };
        let snapshot = proto::OrderbookSnapshot {
            market_ticker: "KX-A".into(),
            time: at("2026-01-05T00:00:00Z"),
            no_bids: vec![level],
            ..Default::default()
        };
        assert_field(validate::snapshot(At::item("snapshots", 0), &B, &snapshot), "snapshots[0].no_bids[0].size_centi");
        // a reference row may be dated up to five minutes ahead of the server, not more
        let market = |time: &str| proto::Market {
            ticker: "KX-A".into(),
            event_ticker: "KX-E".into(),
            series_ticker: "KX".into(),
            status: MarketStatus::Active as i32,
            updated_time: at(time),
            ..Default::default()
        };
        assert!(validate::market(AT, &B, &market("2026-03-01T12:05:00Z")).is_ok());
        let frozen = validate::market(AT, &B, &market("9999-12-31T00:00:00Z")).expect_err("ahead").to_string();
        assert!(frozen.starts_with("trades[7].updated_time: ") && frozen.contains("max_updated_time_skew"), "{frozen}");
    }
}
