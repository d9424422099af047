//! `collect backfill`: everything Kalshi's REST API still serves for a selection, through the importer's
//! conversion ([`kalshi`]) and the write core ([`PendingWrite`]), one write per page.
//!
//! - The hierarchy first: the selected series (by ticker or category), their events and markets (live and
//!   `/historical/markets`), and the events and markets named on their own; reference rows are re-read on every
//!   run (last writer wins), settlements come with the markets that have a result.
//! - Then every market's trades, several markets at once: from `/historical/trades` for the part before
//!   `/historical/cutoff`'s `trades_created_ts` and from `/markets/trades` for the rest, at the largest page size.
//! - Each trade walk is resumable ([`positions`]): a page's rows and the cursor of the next page commit in one
//!   transaction, and a finished walk records the time it covered, so the next run asks only for later trades.
//! - Then Kalshi's candlesticks of every market, for each period of [`Options::candles`]: from
//!   `/historical/markets/{t}/candlesticks` for a market listed by `/historical/markets` (archived before the
//!   cutoff), from `/series/{s}/markets/{t}/candlesticks` for the others. A walk per market and period asks for
//!   windows of at most [`MAX_CANDLES`] periods (start_ts and end_ts, both inclusive at Kalshi), one write each
//!   with the walk's position (the next window's start_ts, as its cursor). A finished walk records the end of the
//!   last period that had ended when it ran: the next run starts there, so it fetches that candle and the one
//!   that was still open again (Kalshi revises an open candle; the table keeps the newest version), and no other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde_json::Value;

use super::positions::{self, Walk};
use super::rest::KalshiRest;
use crate::{
    error::Error,
    import::TableBuffers,
    ingest::write::{self, PendingWrite, Stored},
    limits::Limits,
    progress::{Progress, ProgressMode, Unit},
    store::db::Pool,
};

/// Kalshi's largest page sizes: events 200, markets and trades 1,000.
const EVENTS_PAGE: usize = 200;
const PAGE: usize = 1000;

/// The most candles one candlesticks request may span: Kalshi answers 400 beyond 5,000 periods between start_ts
/// and end_ts (its documentation; spec 3.13 states only the 10,000 of the multi-market /markets/candlesticks).
pub const MAX_CANDLES: i64 = 5000;

/// The default of [`Options::candles`]: hours and days. A minute's candles of a month-long market are 43,200 rows
/// and 9 requests, for periods that mostly have no trade; ask for them with `--candles 1,60,1440`.
pub const DEFAULT_CANDLES: [i32; 2] = [60, 1440];

/// What to backfill.
#[derive(Debug, Clone)]
pub struct Options {
    /// Series tickers: the series, all their events and markets, and the markets' trades.
    pub series: Vec<String>,
    /// Categories (e.g. `Economics`): every series of each, as if named in `series`.
    pub categories: Vec<String>,
    /// Event tickers: the event, its series and markets, and the markets' trades.
    pub events: Vec<String>,
    /// Market tickers: the market, its event and series, and its trades.
    pub markets: Vec<String>,
    /// Only markets whose `status` is one of these (Kalshi's Market.status, e.g. `active`, `finalized`).
    pub statuses: Vec<String>,
    /// Trades at or after this time only.
    pub start: Option<DateTime<Utc>>,
    /// Trades before this time only (default: when the backfill starts).
    pub end: Option<DateTime<Utc>>,
    /// Markets whose trades are fetched at once.
    pub concurrency: usize,
    /// The write core's limits (rows per write, item bounds).
    pub limits: Limits,
    /// How progress is shown (markets done, trades, trades/s, ETA).
    pub progress: ProgressMode,
    /// A trade walk's pages commit together (with the walk's position) once they hold this many rows, and at
    /// the walk's end.
    pub rows_per_write: usize,
    /// Kalshi's candlesticks fetched for every market, by period in minutes (1, 60, 1440); empty for none.
    pub candles: Vec<i32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            series: Vec::new(),
            categories: Vec::new(),
            events: Vec::new(),
            markets: Vec::new(),
            statuses: Vec::new(),
            start: None,
            end: None,
            concurrency: 4,
            limits: Limits::default(),
            progress: ProgressMode::Auto,
            rows_per_write: ROWS_PER_WRITE,
            candles: DEFAULT_CANDLES.to_vec(),
        }
    }
}

/// The default of [`Options::rows_per_write`]: ten of Kalshi's largest trade pages.
pub const ROWS_PER_WRITE: usize = 10_000;

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Markets whose trades were walked.
    pub markets: u64,
    /// Pages read.
    pub pages: u64,
    /// Rows per table: inserted, updated, already stored.
    pub stored: BTreeMap<&'static str, Stored>,
    /// Trade walks that went on from a cursor a previous run stored.
    pub resumed: u64,
    /// Requests sent to Kalshi, retries included, and the retries.
    pub requests: u64,
    pub retries: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// One line per table and the totals, for the command line.
    pub fn summary(&self) -> String {
        let trades = self.stored.get("trades").copied().unwrap_or_default();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut out = format!(
            "backfilled {} markets in {:.1} s: {} pages, {} requests ({} retried), {} new trades ({:.0} trades/s), \
             {} walks resumed\n",
            self.markets,
            secs,
            self.pages,
            self.requests,
            self.retries,
            trades.inserted,
            (trades.inserted + trades.skipped) as f64 / secs,
            self.resumed,
        );
        out.push_str(&write::table_lines(&self.stored));
        out
    }
}

/// A market to walk, as its page described it.
#[derive(Debug, Clone)]
struct MarketRef {
    ticker: String,
    /// Its series, for the live candlesticks' path: `series_ticker`, else the event ticker up to its first `-`
    /// (as the importer reads it).
    series: String,
    open_time: Option<DateTime<Utc>>,
    close_time: Option<DateTime<Utc>>,
    /// Listed by /historical/markets: its candles are only at /historical/markets/{ticker}/candlesticks.
    archived: bool,
}

/// `/historical/cutoff`: where Kalshi's live data ends and its historical endpoints begin.
#[derive(Debug, Clone, Copy)]
struct Cutoff {
    trades: DateTime<Utc>,
}

/// Runs a backfill of `options` from `rest` into the database of `pool`.
pub async fn run(pool: &Pool, rest: &KalshiRest, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let end = options.end.unwrap_or_else(Utc::now);
    let backfill = Backfill { pool, rest, options, report: tokio::sync::Mutex::new(Report::default()) };
    let cutoff = backfill.cutoff().await?;
    let markets = backfill.hierarchy().await?;
    let progress = std::sync::Mutex::new((
        Progress::new("collect backfill", options.progress, Unit::Things("markets"), markets.len() as u64),
        0,
    ));
    let trades_read = |report: &Report| report.stored.get("trades").map_or(0, |s| s.inserted + s.skipped);
    futures_util::stream::iter(markets.iter().map(Ok))
        .try_for_each_concurrent(options.concurrency.max(1), async |market| {
            backfill.trades(market, cutoff, end).await?;
            for &period in &options.candles {
                backfill.candles(market, period, end).await?;
            }
            let trades = trades_read(&*backfill.report.lock().await);
            let mut progress = progress.lock().unwrap_or_else(|p| p.into_inner());
            progress.1 += 1;
            let done = progress.1;
            progress.0.update(done, trades);
            Ok::<(), Error>(())
        })
        .await?;
    let mut report = backfill.report.into_inner();
    let (mut progress, done) = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    progress.finish(done, trades_read(&report));
    report.markets = markets.len() as u64;
    (report.requests, report.retries) = rest.counts();
    report.elapsed = started.elapsed();
    Ok(report)
}

struct Backfill<'a> {
    pool: &'a Pool,
    rest: &'a KalshiRest,
    options: &'a Options,
    report: tokio::sync::Mutex<Report>,
}

impl Backfill<'_> {
    async fn cutoff(&self) -> Result<Option<Cutoff>, Error> {
        let Some(page) = self.rest.get("historical/cutoff", &[]).await? else { return Ok(None) };
        let trades = page
            .get("trades_created_ts")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(|| Error::Kalshi {
                url: "historical/cutoff".into(),
                reason: "no trades_created_ts as an RFC 3339 time".into(),
            })?;
        Ok(Some(Cutoff { trades: trades.with_timezone(&Utc) }))
    }

    /// Stores the selection's series, events and markets; the markets to walk, in ticker order, once each.
    async fn hierarchy(&self) -> Result<Vec<MarketRef>, Error> {
        let o = self.options;
        let mut series = o.series.clone();
        for category in &o.categories {
            let page = self.page("series", &[("category", category.clone())]).await?;
            series.extend(items(&page, "series").filter_map(|s| text(s, "ticker")));
        }
        series.sort();
        series.dedup();
        let mut markets = BTreeMap::new();
        for s in &series {
            if self.page(&format!("series/{s}"), &[]).await?.is_null() {
                return Err(Error::NotFound { kind: "series ticker (at Kalshi)", names: vec![s.clone()] });
            }
            self.pages("events", &[("series_ticker", s.clone())], EVENTS_PAGE, |_| {}).await?;
            self.markets_of(("series_ticker", s), &mut markets).await?;
        }
        for e in &o.events {
            if !self.event_and_series(e).await? {
                return Err(Error::NotFound { kind: "event ticker (at Kalshi)", names: vec![e.clone()] });
            }
            self.markets_of(("event_ticker", e), &mut markets).await?;
        }
        for m in &o.markets {
            let mut page = self.page(&format!("markets/{m}"), &[]).await?;
            let mut archived = false;
            if page.is_null() {
                page = self.page(&format!("historical/markets/{m}"), &[]).await?;
                archived = true;
            }
            let Some(market) = page.get("market") else {
                return Err(Error::NotFound { kind: "market ticker (at Kalshi)", names: vec![m.clone()] });
            };
            if let Some(event) = text(market, "event_ticker") {
                self.event_and_series(&event).await?;
            }
            collect_markets(&serde_json::json!({ "markets": [market] }), archived, &mut markets);
        }
        let statuses = &o.statuses;
        Ok(markets
            .into_values()
            .filter(|(_, status)| statuses.is_empty() || statuses.iter().any(|s| Some(s) == status.as_ref()))
            .map(|(m, _)| m)
            .collect())
    }

    /// Stores the event `ticker` (with its live markets) and its series; false when Kalshi does not know it.
    async fn event_and_series(&self, ticker: &str) -> Result<bool, Error> {
        let page = self.page(&format!("events/{ticker}"), &[]).await?;
        let Some(series) = page.pointer("/event/series_ticker").and_then(Value::as_str) else { return Ok(false) };
        self.page(&format!("series/{series}"), &[]).await?;
        Ok(true)
    }

    /// Stores the markets of one filter (e.g. `series_ticker`), live and archived, and adds them to `markets`.
    async fn markets_of(&self, (key, value): (&str, &str), markets: &mut Markets) -> Result<(), Error> {
        for (source, archived) in [("markets", false), ("historical/markets", true)] {
            self.pages(source, &[(key, value.to_owned())], PAGE, |page| collect_markets(page, archived, markets))
                .await?;
        }
        Ok(())
    }

    /// One page: stored, and returned (null for a 404).
    async fn page(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Error> {
        let Some(page) = self.rest.get(path, query).await? else { return Ok(Value::Null) };
        self.store(path, &page, PendingWrite::new(self.pool, self.options.limits.max_rows_per_write)).await?;
        Ok(page)
    }

    /// Every page of a listing, each stored and shown to `seen`.
    async fn pages(
        &self,
        path: &str,
        query: &[(&str, String)],
        limit: usize,
        mut seen: impl FnMut(&Value),
    ) -> Result<(), Error> {
        let mut cursor = String::new();
        loop {
            let mut q = query.to_vec();
            q.push(("limit", limit.to_string()));
            if !cursor.is_empty() {
                q.push(("cursor", cursor.clone()));
            }
            let page = self.page(path, &q).await?;
            seen(&page);
            cursor = next_cursor(&page);
            if cursor.is_empty() {
                return Ok(());
            }
        }
    }

    /// Converts and validates a page, and commits it with `write`.
    async fn store(&self, path: &str, page: &Value, mut write: PendingWrite) -> Result<(), Error> {
        let mut buffers = TableBuffers::default();
        self.add(path, page, &mut write, &mut buffers).await?;
        self.commit(write, buffers, 1).await
    }

    /// Converts and validates a page into `buffers` of `write`; the number of records.
    async fn add(
        &self,
        path: &str,
        page: &Value,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
    ) -> Result<usize, Error> {
        super::page::add(path, page, &self.options.limits, write, buffers).await
    }

    /// Commits `pages` pages added to `write` (which may carry the walk's position).
    async fn commit(&self, mut write: PendingWrite, buffers: TableBuffers, pages: u64) -> Result<(), Error> {
        buffers.finish(&mut write).await?;
        let committed = write.commit().await?;
        let mut report = self.report.lock().await;
        report.pages += pages;
        for (table, stored) in committed.stored {
            *report.stored.entry(table).or_default() += stored;
        }
        Ok(())
    }

    /// A market's trades up to `end`: the historical part, then the live one.
    async fn trades(&self, market: &MarketRef, cutoff: Option<Cutoff>, end: DateTime<Utc>) -> Result<(), Error> {
        let start = self.options.start;
        if let Some(cutoff) = cutoff {
            let before_cutoff = market.open_time.is_none_or(|open| open < cutoff.trades);
            if before_cutoff && start.is_none_or(|s| s < cutoff.trades) {
                self.walk("historical/trades", &market.ticker, start, end.min(cutoff.trades)).await?;
            }
        }
        if cutoff.is_none_or(|c| c.trades < end) {
            self.walk("markets/trades", &market.ticker, start, end).await?;
        }
        Ok(())
    }

    /// One trade walk: from the stored cursor if a run stopped inside it, else from the time the last finished
    /// walk covered (or `start`), to `end`.
    async fn walk(
        &self,
        source: &str,
        ticker: &str,
        start: Option<DateTime<Utc>>,
        end: DateTime<Utc>,
    ) -> Result<(), Error> {
        let name = format!("{source} {ticker}");
        let stored = positions::load(self.pool, &name).await?;
        let mut walk = match stored {
            Some(walk) if !walk.cursor.is_empty() => {
                self.report.lock().await.resumed += 1;
                walk
            }
            stored => {
                let through = stored.and_then(|w| w.through);
                // a finished walk covered everything up to `through`: only later trades are missing
                let from = match (through, start) {
                    (Some(t), Some(s)) if t > s => Some(t),
                    (Some(t), None) => Some(t),
                    _ => start,
                };
                if from.is_some_and(|f| f >= end) {
                    return Ok(());
                }
                Walk { cursor: String::new(), min: from, max: Some(end), through }
            }
        };
        let mut pending: Option<(PendingWrite, TableBuffers, u64, usize)> = None;
        loop {
            let mut query = vec![("ticker", ticker.to_owned()), ("limit", PAGE.to_string())];
            if let Some(min) = walk.min {
                query.push(("min_ts", min.timestamp().to_string()));
            }
            if let Some(max) = walk.max {
                query.push(("max_ts", max.timestamp().to_string()));
            }
            if !walk.cursor.is_empty() {
                query.push(("cursor", walk.cursor.clone()));
            }
            // a 404 (a market Kalshi no longer serves here) ends the walk like an empty last page
            let page = self.rest.get(source, &query).await?.unwrap_or_else(|| serde_json::json!({ "trades": [] }));
            walk.cursor = next_cursor(&page);
            let max_rows = self.options.limits.max_rows_per_write;
            let (write, buffers, pages, rows) =
                pending.get_or_insert_with(|| (PendingWrite::new(self.pool, max_rows), TableBuffers::default(), 0, 0));
            *rows += self.add(source, &page, write, buffers).await?;
            *pages += 1;
            // pages go in together, up to rows_per_write: a write's fixed cost (staging, one transaction) is most
            // of a single page's; a stop loses at most the pages of the write under way, read again on resume
            if walk.cursor.is_empty() || *rows >= self.options.rows_per_write {
                let (mut write, buffers, pages, _) = pending.take().expect("filled above");
                positions::save(&mut write, &name, &walk);
                self.commit(write, buffers, pages).await?;
            }
            if walk.cursor.is_empty() {
                return Ok(());
            }
        }
    }
}

impl Backfill<'_> {
    /// One candle walk: the candles of `market` for `period` minutes, in windows of at most [`MAX_CANDLES`]
    /// periods, from the stored window if a run stopped inside the walk, else from the end of the last period a
    /// finished walk covered (or `start`, or the market's open time), to the period open at `end` (or at its
    /// close, when earlier).
    async fn candles(&self, market: &MarketRef, period: i32, end: DateTime<Utc>) -> Result<(), Error> {
        let ticker = &market.ticker;
        let source = if market.archived {
            format!("historical/markets/{ticker}/candlesticks")
        } else {
            format!("series/{}/markets/{ticker}/candlesticks", market.series)
        };
        let name = format!("candles {period} {ticker}");
        let step = i64::from(period) * 60;
        let to = market.close_time.map_or(end, |close| close.min(end)).timestamp();
        // the end of the last period that had ended at `to`; the next run begins there
        let covered = to.div_euclid(step) * step;
        let time = |seconds: i64| DateTime::<Utc>::from_timestamp(seconds, 0);
        let mut walk = match positions::load(self.pool, &name).await? {
            Some(walk) if !walk.cursor.is_empty() => {
                self.report.lock().await.resumed += 1;
                walk
            }
            stored => {
                let through = stored.and_then(|w| w.through);
                let from = match (through, self.options.start) {
                    (Some(t), Some(s)) => Some(t.max(s)),
                    (Some(t), None) => Some(t),
                    (None, s) => s.or(market.open_time),
                }
                .unwrap_or(self.options.limits.earliest_fact);
                if from.timestamp() > covered {
                    return Ok(());
                }
                // a walk from the market's beginning (no --start, nothing stored) has no lower bound: its end is
                // then all the walk covered (see positions::save)
                let min = (through.is_some() || self.options.start.is_some()).then_some(from);
                Walk { cursor: from.timestamp().to_string(), min, max: time(covered), through }
            }
        };
        // the candle still open at `to` ends after `covered`: the last window reaches it
        let last = walk.max.map_or(covered, |m| m.timestamp()) + step;
        loop {
            let start_ts: i64 = walk.cursor.parse().map_err(|_| Error::Kalshi {
                url: source.clone(),
                reason: format!("stored position {:?} of walk {name:?} is not a unix time", walk.cursor),
            })?;
            // MAX_CANDLES period ends at most in [start_ts, end_ts], both inclusive
            let end_ts = (start_ts + (MAX_CANDLES - 1) * step).min(last);
            let query = [
                ("start_ts", start_ts.to_string()),
                ("end_ts", end_ts.to_string()),
                ("period_interval", period.to_string()),
            ];
            // a 404 (a market Kalshi does not serve here) ends the walk like an empty window
            let mut page = self.rest.get(&source, &query).await?.unwrap_or_else(|| serde_json::json!({}));
            if let Some(fields) = page.as_object_mut() {
                // Kalshi's page does not carry its period: the importer needs it (see import::kalshi)
                fields.insert("period_interval".into(), period.into());
                fields.entry("ticker").or_insert_with(|| ticker.as_str().into());
                fields.entry("candlesticks").or_insert_with(|| serde_json::json!([]));
            }
            walk.cursor = if end_ts >= last { String::new() } else { (end_ts + 1).to_string() };
            let mut write = PendingWrite::new(self.pool, self.options.limits.max_rows_per_write);
            let mut buffers = TableBuffers::default();
            self.add(&source, &page, &mut write, &mut buffers).await?;
            positions::save(&mut write, &name, &walk);
            self.commit(write, buffers, 1).await?;
            if walk.cursor.is_empty() {
                return Ok(());
            }
        }
    }
}

/// The items of a page's `key` array.
fn items<'v>(page: &'v Value, key: &str) -> impl Iterator<Item = &'v Value> {
    page.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn text(item: &Value, key: &str) -> Option<String> {
    item.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A page's cursor for the next one; empty at the end.
fn next_cursor(page: &Value) -> String {
    page.get("cursor").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The markets to walk by ticker, with their status.
type Markets = BTreeMap<String, (MarketRef, Option<String>)>;

/// Adds the markets of a `markets` page (with their status) to `out`; `archived` for /historical/markets.
fn collect_markets(page: &Value, archived: bool, out: &mut Markets) {
    let time = |market: &Value, key: &str| {
        text(market, key).and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc))
    };
    for market in items(page, "markets") {
        let Some(ticker) = text(market, "ticker") else { continue };
        let event = text(market, "event_ticker").unwrap_or_default();
        let series = text(market, "series_ticker")
            .unwrap_or_else(|| event.split_once('-').map_or(event.as_str(), |(series, _)| series).to_owned());
        let market_ref = MarketRef {
            ticker: ticker.clone(),
            series,
            open_time: time(market, "open_time"),
            close_time: time(market, "close_time"),
            archived,
        };
        out.insert(ticker, (market_ref, text(market, "status")));
    }
}
