//! StreamCandles: the request's range read over one snapshot and watermark, as pieces in time order (see
//! [`aggregates`](super::aggregates)): whole days and minutes from the aggregates kept at write time where they
//! tile the periods, the rest from the trades as StreamTrades reads them; all folded on the way. A resumed stream starts
//! again at the period of its last candle and skips the candles up to it; what a market's fill and `previous`
//! need from before that point is read first, in one statement over the same snapshot.
//! The candles themselves are folded by [`ohlcv`](super::ohlcv).

use std::{collections::HashMap, sync::Arc};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{BooleanBuilder, Int64Builder},
};

use chrono::{DateTime, Utc};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    aggregates::{self, Level, Piece},
    arrow::{self, IpcStream, TickerDictionary},
    ohlcv::{Aggregator, Candle, Interval, MarketState, Part},
    request::{Position, Resume, StreamSpec},
    runner::{self, Abort, StreamBody},
    snapshot::{OrderedCopy, Snapshot},
    sql, trades,
};
use crate::{
    error::Error,
    proto::{
        self, ArrowBatch, CandleBatch, FillPolicy, Layout, StreamCandlesRequest, StreamCandlesResponse,
        stream_candles_response::Payload,
    },
    store::copy,
    token::Kind,
};

/// StreamCandles: a validated request.
#[derive(Debug)]
pub(crate) struct CandleStream {
    spec: StreamSpec,
    interval: Interval,
    fill: FillPolicy,
    /// LAYOUT_ROWS or LAYOUT_ARROW.
    layout: Layout,
}

stream_request!(StreamCandlesRequest, |request| Self {
    resume_token: String::new(),
    batch_size: 0,
    layout: 0,
    ..request.clone()
});

/// Per selected market ($3, or every market when NULL): its close time and its last trade before $1 (at or below
/// the watermark $2 when set): what fill and `previous` need from before the trades the stream reads. A market
/// known only by its facts has no close time.
const BEFORE: &str = "
SELECT k.ticker, m.close_time, p.ts, p.yes_price_micros
  FROM (SELECT unnest($3::text[]) AS ticker
        UNION ALL
        SELECT ticker FROM markets WHERE $3::text[] IS NULL
        UNION ALL
        SELECT DISTINCT c.ticker FROM coverage_daily c
         WHERE $3::text[] IS NULL AND NOT EXISTS (SELECT 1 FROM markets o WHERE o.ticker = c.ticker)) k
  LEFT JOIN markets m ON m.ticker = k.ticker
  LEFT JOIN LATERAL (
        SELECT ts, yes_price_micros FROM trades t
         WHERE t.ticker = k.ticker AND t.ts < $1 AND ($2::bigint IS NULL OR t.ingest_seq <= $2)
         ORDER BY ts DESC, trade_id DESC LIMIT 1) p ON true";

impl StreamBody for CandleStream {
    type Request = StreamCandlesRequest;
    type Response = StreamCandlesResponse;
    const KIND: Kind = Kind::Candles;

    fn new(request: &StreamCandlesRequest, spec: StreamSpec) -> Result<Self, Error> {
        let interval = Interval::new(request.interval_seconds)?;
        let fill = match FillPolicy::try_from(request.fill_policy) {
            Ok(FillPolicy::Unspecified | FillPolicy::None) => FillPolicy::None,
            Ok(FillPolicy::Previous) => FillPolicy::Previous,
            Err(_) => {
                return Err(Error::invalid(
                    "fill_policy",
                    format!(
                        "unknown value {}; allowed: 0 (none), FILL_POLICY_NONE (1), FILL_POLICY_PREVIOUS (2)",
                        request.fill_policy
                    ),
                ));
            }
        };
        let layout = match Layout::try_from(request.layout) {
            Ok(Layout::Unspecified | Layout::Rows) => Layout::Rows,
            Ok(Layout::Arrow) => Layout::Arrow,
            Ok(Layout::Columns) => {
                return Err(Error::invalid(
                    "layout",
                    "LAYOUT_COLUMNS (2) is for StreamTrades only; allowed: 0 (rows), LAYOUT_ROWS (1), LAYOUT_ARROW (3)",
                ));
            }
            Err(_) => {
                return Err(Error::invalid(
                    "layout",
                    format!("unknown value {}; allowed: 0 (rows), LAYOUT_ROWS (1), LAYOUT_ARROW (3)", request.layout),
                ));
            }
        };
        Ok(Self { spec, interval, fill, layout })
    }

    fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    async fn run(
        self,
        snapshot: &Snapshot,
        tx: &mpsc::Sender<Result<StreamCandlesResponse, Status>>,
    ) -> Result<(), Abort> {
        let StreamSpec { selection, batch, resume } = &self.spec;
        let start = selection.start.timestamp_micros();
        let end = selection.end.timestamp_micros();
        // a position the stream cannot have given (another interval, outside the range) is a damaged token: the
        // fold would otherwise start at an arbitrary period, years of periods away or past the end of time
        let first_period = self.interval.start_of(start);
        let (mut position, after) = resume.start(snapshot.watermark, |key| {
            decode_key(key).filter(|(period, _)| {
                (first_period..end).contains(period) && self.interval.start_of(*period) == *period
            })
        })?;
        // a resumed stream reads again from the start of its last candle's period
        let from = after.as_ref().map_or(start, |(period, _)| (*period).max(start));
        let from_time = DateTime::<Utc>::from_timestamp_micros(from).unwrap_or(selection.start);
        let watermark = snapshot.pinned.then_some(snapshot.watermark);
        let rows = snapshot.conn.query(BEFORE, &[&from_time, &watermark, &snapshot.markets]).await?;
        let mut markets = HashMap::with_capacity(rows.len());
        for row in &rows {
            let before: Option<DateTime<Utc>> = row.try_get(2)?;
            let state = MarketState {
                last: row.try_get(3)?,
                started: before.is_some_and(|t| t.timestamp_micros() >= start),
                close: row.try_get::<_, Option<DateTime<Utc>>>(1)?.map(|t| t.timestamp_micros()),
            };
            markets.insert(row.try_get::<_, String>(0)?, state);
        }
        let mut aggregator = Aggregator::new(self.interval, self.fill, start, end, markets);
        if let Some((period, _)) = &after {
            aggregator.resume_at(*period);
        }

        let (sources, segments) = segments(from, end, self.interval, snapshot.markets.as_deref(), watermark);
        let bound = sql::Bound { markets: snapshot.markets.clone(), after: None };
        let mut copies = OrderedCopy::start(snapshot, segments, &bound).await?;
        let mut out = CandleBatcher::new(self.layout, *batch)?;
        for source in sources {
            let Some(mut blocks) = copies.next_segment().await? else { break };
            let mut reader = copy::Reader::default();
            while let Some(block) = blocks.recv().await {
                for chunk in block? {
                    reader.push(chunk);
                    match source {
                        SegmentRows::Trades => {
                            while let Some(tuple) = reader.next_tuple::<7>()? {
                                let trade = trades::parse(&reader, &tuple)?;
                                aggregator.push(Part::trade(
                                    trade.micros,
                                    trade.ticker,
                                    trade.yes_price_micros,
                                    trade.count_centi,
                                ));
                                reader.consume(&tuple);
                                out.send_ready(&mut aggregator, after.as_ref(), &mut position, resume, tx).await?;
                            }
                        }
                        SegmentRows::Buckets => {
                            while let Some(tuple) = reader.next_tuple::<10>()? {
                                aggregator.push(aggregates::parse(&reader, &tuple)?);
                                reader.consume(&tuple);
                                out.send_ready(&mut aggregator, after.as_ref(), &mut position, resume, tx).await?;
                            }
                        }
                    }
                }
            }
            reader.finish()?;
        }
        aggregator.finish();
        out.send_ready(&mut aggregator, after.as_ref(), &mut position, resume, tx).await?;
        if out.len > 0 {
            runner::send(tx, out.take(&position, resume)?).await?;
        }
        let summary = runner::summary(position.count, &position.hash, snapshot.watermark);
        let message = StreamCandlesResponse { payload: Some(Payload::Summary(summary)), resume_token: String::new() };
        runner::send(tx, message).await
    }
}

/// What a segment's rows are.
#[derive(Debug, Clone, Copy)]
enum SegmentRows {
    /// Trades, as StreamTrades reads them.
    Trades,
    /// Aggregates of buckets (or, pinned below a bucket's data, that bucket's trades), see [`aggregates`].
    Buckets,
}

/// The COPY statements that read [from, end) for `interval`, in order, and what each one reads: the write-time
/// aggregates where whole buckets tile the periods, the trades elsewhere; each cut at midnights into runs of
/// days (one or more day partitions, read two at a time by [`OrderedCopy`]). The statements read `markets` from
/// the transaction ([`sql::Bound`]); a candle stream's resumption needs no key in SQL (it skips candles as it
/// folds them).
fn segments(
    from: i64,
    end: i64,
    interval: Interval,
    markets: Option<&[String]>,
    watermark: Option<i64>,
) -> (Vec<SegmentRows>, Vec<String>) {
    let time = |micros| DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
    let mut sources = Vec::new();
    let mut segments = Vec::new();
    for piece in aggregates::plan(from, end, &Level::tiling(interval.micros(), markets)) {
        let (source, from, to, level) = match piece {
            Piece::Trades { from, to } => (SegmentRows::Trades, from, to, None),
            Piece::Buckets { level, from, to } => (SegmentRows::Buckets, from, to, Some(level)),
        };
        for (start, end) in sql::day_segments(time(from), time(to), None) {
            let select = match level {
                None => trades::select_sql(start, end, markets, watermark, None),
                Some(level) => aggregates::select_sql(level, start, end, markets, watermark),
            };
            sources.push(source);
            segments.push(format!("COPY ({select}) TO STDOUT (FORMAT binary)"));
        }
    }
    (sources, segments)
}

/// Candles on their way out: the batch being filled, in the request's layout.
struct CandleBatcher {
    /// The rows layout's batch.
    batch: Vec<proto::Candle>,
    /// The Arrow layout's columns and IPC stream.
    arrow: Option<CandleArrays>,
    len: usize,
    size: usize,
    encoded: Vec<u8>,
}

impl CandleBatcher {
    fn new(layout: Layout, size: usize) -> Result<Self, Error> {
        let arrow = if layout == Layout::Arrow { Some(CandleArrays::new(size)?) } else { None };
        let batch = if arrow.is_none() { Vec::with_capacity(size) } else { Vec::new() };
        Ok(Self { batch, arrow, len: 0, size, encoded: Vec::new() })
    }

    /// Moves the aggregator's finished candles into batches, skipping those a resumed stream delivered before,
    /// and sends every full batch. Called after every push: the aggregator makes the filled candles of a gap as
    /// they are taken here, so a gap of any length costs one batch of memory, and waiting on the channel is what
    /// paces it. Each candle also takes from the task's cooperative budget, so that a run of candles the client
    /// already had (skipped, never sent) still lets the runtime notice a cancelled stream.
    async fn send_ready(
        &mut self,
        aggregator: &mut Aggregator,
        after: Option<&(i64, String)>,
        position: &mut Position,
        resume: &Resume,
        tx: &mpsc::Sender<Result<StreamCandlesResponse, Status>>,
    ) -> Result<(), Abort> {
        for candle in aggregator.drain() {
            tokio::task::coop::consume_budget().await;
            if after.is_some_and(|(period, ticker)| (candle.period_start, candle.ticker.as_str()) <= (*period, ticker))
            {
                continue;
            }
            let message = candle.to_proto();
            self.encoded.clear();
            message.encode(&mut self.encoded).expect("a Vec grows");
            position.hash.item(&self.encoded);
            position.count += 1;
            encode_key(candle.period_start, &candle.ticker, &mut position.key);
            match &mut self.arrow {
                Some(arrow) => arrow.push(&candle),
                None => self.batch.push(message),
            }
            self.len += 1;
            if self.len == self.size {
                runner::send(tx, self.take(position, resume)?).await?;
            }
        }
        Ok(())
    }

    fn take(&mut self, position: &Position, resume: &Resume) -> Result<StreamCandlesResponse, Error> {
        self.len = 0;
        let payload = match &mut self.arrow {
            Some(arrow) => Payload::Arrow(ArrowBatch { ipc: arrow.take()? }),
            None => Payload::Candles(CandleBatch {
                candles: std::mem::replace(&mut self.batch, Vec::with_capacity(self.size)),
            }),
        };
        Ok(StreamCandlesResponse {
            payload: Some(payload),
            resume_token: position.token(Kind::Candles, &resume.binding),
        })
    }
}

/// The columns of an Arrow record batch of candles being filled (LAYOUT_ARROW), in [`arrow::CANDLE_SCHEMA`]'s
/// order, and the call's IPC stream.
#[derive(Debug)]
struct CandleArrays {
    period_start: Vec<i64>,
    period_end: Vec<i64>,
    market: Vec<i32>,
    open: Vec<i64>,
    high: Vec<i64>,
    low: Vec<i64>,
    close: Vec<i64>,
    volume: Vec<i64>,
    trades: Vec<i64>,
    vwap: Vec<i64>,
    previous: Int64Builder,
    empty: BooleanBuilder,
    partial: BooleanBuilder,
    tickers: TickerDictionary,
    ipc: IpcStream,
}

impl CandleArrays {
    fn new(capacity: usize) -> Result<Self, Error> {
        Ok(Self {
            period_start: Vec::with_capacity(capacity),
            period_end: Vec::with_capacity(capacity),
            market: Vec::with_capacity(capacity),
            open: Vec::with_capacity(capacity),
            high: Vec::with_capacity(capacity),
            low: Vec::with_capacity(capacity),
            close: Vec::with_capacity(capacity),
            volume: Vec::with_capacity(capacity),
            trades: Vec::with_capacity(capacity),
            vwap: Vec::with_capacity(capacity),
            previous: Int64Builder::with_capacity(capacity),
            empty: BooleanBuilder::with_capacity(capacity),
            partial: BooleanBuilder::with_capacity(capacity),
            tickers: TickerDictionary::default(),
            ipc: IpcStream::new(&arrow::CANDLE_SCHEMA)?,
        })
    }

    fn push(&mut self, candle: &Candle) {
        self.period_start.push(candle.period_start);
        self.period_end.push(candle.period_end);
        self.market.push(self.tickers.key(&candle.ticker));
        self.open.push(candle.open);
        self.high.push(candle.high);
        self.low.push(candle.low);
        self.close.push(candle.close);
        self.volume.push(candle.volume);
        self.trades.push(candle.trades);
        self.vwap.push(candle.vwap);
        self.previous.append_option(candle.previous);
        self.empty.append_value(candle.empty);
        self.partial.append_value(candle.partial);
    }

    /// The IPC messages of the candles pushed since the last call; the columns start over.
    fn take(&mut self) -> Result<Vec<u8>, Error> {
        let columns: Vec<ArrayRef> = vec![
            arrow::timestamp_column(&mut self.period_start),
            arrow::timestamp_column(&mut self.period_end),
            self.tickers.column(&mut self.market)?,
            arrow::int64_column(&mut self.open),
            arrow::int64_column(&mut self.high),
            arrow::int64_column(&mut self.low),
            arrow::int64_column(&mut self.close),
            arrow::int64_column(&mut self.volume),
            arrow::int64_column(&mut self.trades),
            arrow::int64_column(&mut self.vwap),
            Arc::new(self.previous.finish()),
            Arc::new(self.empty.finish()),
            Arc::new(self.partial.finish()),
        ];
        let batch = RecordBatch::try_new(arrow::CANDLE_SCHEMA.clone(), columns)?;
        self.ipc.encode(&batch)
    }
}

/// The position key of a candle: `period start (i64) | ticker`.
fn encode_key(period_start: i64, ticker: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&period_start.to_be_bytes());
    out.extend_from_slice(ticker.as_bytes());
}

fn decode_key(key: &[u8]) -> Option<(i64, String)> {
    let (period, ticker) = key.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*period), String::from_utf8(ticker.to_vec()).ok()?))
}
