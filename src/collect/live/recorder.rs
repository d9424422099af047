//! The writing side of `collect live`: batches by count and age, the definitions of markets the database lacks
//! (fetched from REST into the same write), commits retried while the database is away, the raw log.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    options::{MAX_BACKOFF, Options, Selection},
    raw_log::RawLog,
    report::{Health, Report},
};
use crate::{
    collect::{page, rest::KalshiRest},
    error::Error,
    import::{TableBuffers, kalshi::Record},
    ingest::{
        validate::Bounds,
        write::{PendingWrite, Stored},
    },
    store::db::Pool,
};

/// Tries of one batch's commit before the recorder gives up (about 8 minutes with the backoff's 30 s cap).
const WRITE_TRIES: u32 = 20;
/// Kalshi's largest market list page.
const PAGE: usize = 1000;

/// A data message on its way to the writer: its log line and what it converts to.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) line: String,
    pub(super) records: Vec<Record>,
}

/// The writing side: batches, unknown markets, commits with retries, the raw log.
pub(super) struct Recorder<'a> {
    pool: &'a Pool,
    rest: &'a KalshiRest,
    options: &'a Options,
    /// Markets known to be in the database (or asked of Kalshi in vain).
    known: HashSet<String>,
    log: Option<RawLog>,
    report: Report,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(pool: &'a Pool, rest: &'a KalshiRest, options: &'a Options) -> Result<Self, Error> {
        let log = options.raw_log.clone().map(RawLog::new).transpose()?;
        Ok(Self { pool, rest, options, known: HashSet::new(), log, report: Report::default() })
    }

    /// Stores the selection's open markets (with their events and series); their tickers.
    pub(super) async fn open_markets(&mut self, selection: &Selection) -> Result<BTreeSet<String>, Error> {
        let mut documents = Vec::new();
        let filters = self
            .options
            .series
            .iter()
            .map(|s| ("series_ticker", s))
            .chain(self.options.events.iter().map(|e| ("event_ticker", e)));
        for (key, value) in filters {
            let mut cursor = String::new();
            loop {
                let mut query = vec![(key, value.clone()), ("status", "open".to_owned()), ("limit", PAGE.to_string())];
                if !cursor.is_empty() {
                    query.push(("cursor", cursor.clone()));
                }
                let page = self.rest.get("markets", &query).await?.unwrap_or(Value::Null);
                cursor = page.get("cursor").and_then(Value::as_str).unwrap_or_default().to_owned();
                documents.push(("markets".to_owned(), page));
                if cursor.is_empty() {
                    break;
                }
            }
        }
        let mut markets = BTreeSet::new();
        for (_, page) in &documents {
            for market in page.get("markets").and_then(Value::as_array).into_iter().flatten() {
                if let Some(ticker) = market.get("ticker").and_then(Value::as_str) {
                    markets.insert(ticker.to_owned());
                }
            }
        }
        let mut write = PendingWrite::new(self.pool, self.options.limits.max_rows_per_write);
        let mut buffers = TableBuffers::default();
        for (path, page) in &documents {
            self.push_document(path, page, &mut write, &mut buffers).await?;
        }
        let mut events = BTreeSet::new();
        for ticker in selection.markets.clone() {
            match self.fetch_market(&ticker, &mut write, &mut buffers, &mut events).await? {
                true => markets.insert(ticker),
                false => return Err(Error::NotFound { kind: "market ticker (at Kalshi)", names: vec![ticker] }),
            };
        }
        for (_, page) in &documents {
            for market in page.get("markets").and_then(Value::as_array).into_iter().flatten() {
                if let Some(event) = market.get("event_ticker").and_then(Value::as_str) {
                    self.fetch_event(event, &mut write, &mut buffers, &mut events).await?;
                }
            }
        }
        buffers.finish(&mut write).await?;
        let committed = write.commit().await?;
        self.count(committed.stored);
        self.known.extend(markets.iter().cloned());
        Ok(markets)
    }

    /// Converts a REST document into `buffers` of `write`.
    async fn push_document(
        &mut self,
        path: &str,
        page: &Value,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
    ) -> Result<(), Error> {
        page::add(path, page, &self.options.limits, write, buffers).await?;
        Ok(())
    }

    /// Adds the market `ticker` (live, else archived) with its event and series to the write; false when Kalshi
    /// does not know it.
    async fn fetch_market(
        &mut self,
        ticker: &str,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
        events: &mut BTreeSet<String>,
    ) -> Result<bool, Error> {
        let mut path = format!("markets/{ticker}");
        let mut page = self.rest.get(&path, &[]).await?;
        if page.is_none() {
            path = format!("historical/markets/{ticker}");
            page = self.rest.get(&path, &[]).await?;
        }
        let Some(page) = page else { return Ok(false) };
        self.push_document(&path, &page, write, buffers).await?;
        if let Some(event) = page.pointer("/market/event_ticker").and_then(Value::as_str) {
            self.fetch_event(event, write, buffers, events).await?;
        }
        Ok(true)
    }

    /// Adds the event `ticker` and its series to the write, once per write.
    async fn fetch_event(
        &mut self,
        ticker: &str,
        write: &mut PendingWrite,
        buffers: &mut TableBuffers,
        events: &mut BTreeSet<String>,
    ) -> Result<(), Error> {
        if !events.insert(ticker.to_owned()) {
            return Ok(());
        }
        let path = format!("events/{ticker}");
        let Some(mut page) = self.rest.get(&path, &[]).await? else { return Ok(()) };
        // the event's nested markets are not this write's business: only the event itself
        if let Some(event) = page.get_mut("event").and_then(Value::as_object_mut) {
            event.remove("markets");
        }
        if let Some(page) = page.as_object_mut() {
            page.remove("markets");
        }
        self.push_document(&path, &page, write, buffers).await?;
        if let Some(series) = page.pointer("/event/series_ticker").and_then(Value::as_str) {
            let path = format!("series/{series}");
            if let Some(page) = self.rest.get(&path, &[]).await? {
                self.push_document(&path, &page, write, buffers).await?;
            }
        }
        Ok(())
    }

    fn count(&mut self, stored: BTreeMap<&'static str, Stored>) {
        for (table, stored) in stored {
            *self.report.stored.entry(table).or_default() += stored;
        }
    }

    /// Takes messages until the reader is done, committing a batch by count or by age; the last batch at the end.
    pub(super) async fn run(
        mut self,
        mut receiver: mpsc::Receiver<Received>,
        health: &Health,
    ) -> Result<Report, Error> {
        let mut batch: Vec<Received> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                Some(at) => tokio::select! {
                    received = receiver.recv() => received,
                    () = tokio::time::sleep_until(at) => {
                        self.flush(&mut batch, health).await?;
                        deadline = None;
                        continue;
                    }
                },
                None => receiver.recv().await,
            };
            let Some(received) = next else { break };
            if batch.is_empty() {
                deadline = Some(tokio::time::Instant::now() + self.options.flush_interval);
            }
            batch.push(received);
            if batch.len() >= self.options.flush_messages {
                self.flush(&mut batch, health).await?;
                deadline = None;
            }
        }
        self.flush(&mut batch, health).await?;
        if let Some(log) = self.log.take() {
            log.close()?;
        }
        Ok(self.report)
    }

    /// Commits `batch`, trying again after a failure of the database until it goes in.
    async fn flush(&mut self, batch: &mut Vec<Received>, health: &Health) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pause = self.options.backoff;
        for tries in 1.. {
            match self.write(batch).await {
                Ok(()) => {
                    if tries > 1 {
                        health.writing(true).await;
                    }
                    break;
                }
                Err(e) if tries > WRITE_TRIES => return Err(e),
                Err(e) => {
                    health.writing(false).await;
                    self.report.write_retries += 1;
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, messages = batch.len(), "collect live: a write failed, trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
        if let Some(log) = &mut self.log {
            log.append(batch.iter().map(|r| r.line.as_str()))?;
        }
        batch.clear();
        Ok(())
    }

    /// One write of `batch`: unknown markets first, then every record the write core accepts.
    async fn write(&mut self, batch: &[Received]) -> Result<(), Error> {
        let mut write = PendingWrite::new(self.pool, self.options.limits.max_rows_per_write);
        let mut buffers = TableBuffers::default();
        let unknown: BTreeSet<&str> =
            batch.iter().flat_map(|r| &r.records).filter_map(ticker).filter(|t| !self.known.contains(*t)).collect();
        let (mut fetched, mut unfound) = (Vec::new(), Vec::new());
        if !unknown.is_empty() {
            let conn = self.pool.get().await?;
            let names: Vec<&str> = unknown.iter().copied().collect();
            let rows = conn.query("SELECT ticker FROM markets WHERE ticker = ANY($1)", &[&names]).await?;
            let stored: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            drop(conn);
            let mut events = BTreeSet::new();
            for ticker in unknown.into_iter().filter(|t| !stored.contains(*t)) {
                match self.fetch_market(ticker, &mut write, &mut buffers, &mut events).await {
                    Ok(true) => fetched.push(ticker.to_owned()),
                    // asked in vain: not asked again (its facts are kept without a definition)
                    Ok(false) => {
                        tracing::warn!(ticker, "collect live: a market Kalshi does not know; its facts are kept");
                        unfound.push(ticker.to_owned());
                    }
                    // asked again with the next batch that names it
                    Err(e) => {
                        tracing::warn!(ticker, error = %e, "collect live: a market's definition could not be fetched")
                    }
                }
            }
            self.known.extend(stored);
        }
        let bounds = Bounds::new(&self.options.limits, Utc::now());
        let mut refused = 0;
        for received in batch {
            for record in &received.records {
                match buffers.push(&mut write, record.clone(), &bounds).await {
                    Ok(_) => {}
                    Err(e @ (Error::InvalidArgument { .. } | Error::TooLarge { .. })) => {
                        refused += 1;
                        tracing::warn!(error = %e, line = %received.line, "collect live: a message refused by the write core, dropped");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        buffers.finish(&mut write).await?;
        let committed = write.commit().await?;
        self.report.writes += 1;
        self.report.refused += refused;
        self.report.fetched_markets += fetched.len() as u64;
        self.known.extend(fetched);
        self.known.extend(unfound);
        self.count(committed.stored);
        Ok(())
    }
}

/// The market a fact is about.
fn ticker(record: &Record) -> Option<&str> {
    match record {
        Record::Trade(t) => Some(&t.market_ticker),
        Record::Snapshot(s) => Some(&s.market_ticker),
        Record::Delta(d) => Some(&d.market_ticker),
        Record::Lifecycle(l) => Some(&l.market_ticker),
        _ => None,
    }
}
