//! StreamKalshiCandles: Kalshi's own candles (table kalshi_candles, migration 0010) of the selected markets and one
//! period length, whose period ends in the request's range, in the order (end time, market ticker).
//!
//! Read like StreamTrades: one `COPY (SELECT ... ORDER BY end_ts, ticker, ingest_seq)` per run of day partitions,
//! in index order (the primary key leads with period_minutes, end_ts, ticker; one market reads the
//! (ticker, period_minutes, end_ts) index), never sorted. A key Kalshi revised is stored in several versions, which
//! arrive one after the other, oldest first: the stream keeps the last one at or below its watermark, so only one
//! candle is held back at a time.

use chrono::{DateTime, Utc};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    request::{Position, StreamSpec},
    runner::{self, Abort, StreamBody},
    snapshot::{OrderedCopy, Snapshot},
    sql,
};
use crate::{
    error::Error,
    proto::{
        KalshiCandle, KalshiCandleBatch, Layout, StreamKalshiCandlesRequest, StreamKalshiCandlesResponse,
        stream_kalshi_candles_response::Payload,
    },
    store::copy,
    time,
    token::{self, Kind},
};

/// StreamKalshiCandles: a validated request.
#[derive(Debug)]
pub(crate) struct KalshiCandleStream {
    spec: StreamSpec,
    period_minutes: i32,
}

stream_request!(StreamKalshiCandlesRequest, |request| Self {
    resume_token: String::new(),
    batch_size: 0,
    layout: 0,
    ..request.clone()
});

/// Columns per row of [`select_sql`].
const COLUMNS: usize = 19;

impl StreamBody for KalshiCandleStream {
    type Request = StreamKalshiCandlesRequest;
    type Response = StreamKalshiCandlesResponse;
    const KIND: Kind = Kind::KalshiCandles;

    fn new(request: &StreamKalshiCandlesRequest, spec: StreamSpec) -> Result<Self, Error> {
        let period_minutes = match request.period_minutes {
            p @ (1 | 60 | 1440) => p,
            p => {
                return Err(Error::invalid(
                    "period_minutes",
                    format!("must be 1, 60 or 1440 (Kalshi's candle periods), got {p}"),
                ));
            }
        };
        match Layout::try_from(request.layout) {
            Ok(Layout::Unspecified | Layout::Rows) => {}
            Ok(_) => {
                return Err(Error::invalid(
                    "layout",
                    format!(
                        "{} is not offered for Kalshi's candles yet; allowed: 0 (rows), LAYOUT_ROWS (1)",
                        request.layout().as_str_name()
                    ),
                ));
            }
            Err(_) => {
                return Err(Error::invalid(
                    "layout",
                    format!("unknown value {}; allowed: 0 (rows), LAYOUT_ROWS (1)", request.layout),
                ));
            }
        }
        Ok(Self { spec, period_minutes })
    }

    fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    async fn run(
        self,
        snapshot: &Snapshot,
        tx: &mpsc::Sender<Result<StreamKalshiCandlesResponse, Status>>,
    ) -> Result<(), Abort> {
        let StreamSpec { selection, batch: batch_size, resume } = self.spec;
        let range = selection.start.timestamp_micros()..selection.end.timestamp_micros();
        // a position outside the range is one this request cannot have given: a damaged token
        let (mut position, after) =
            resume.start(snapshot.watermark, |key| decode_key(key).filter(|(end, _)| range.contains(end)))?;
        let after_micros = after.as_ref().map(|(end, _)| *end);
        let watermark = snapshot.pinned.then_some(snapshot.watermark);
        let segments: Vec<String> = sql::day_segments(selection.start, selection.end, after_micros)
            .into_iter()
            .map(|(start, end)| {
                let select =
                    select_sql(self.period_minutes, start, end, snapshot.markets.as_deref(), watermark, after_micros);
                format!("COPY ({select}) TO STDOUT (FORMAT binary)")
            })
            .collect();
        let bound = sql::Bound { markets: snapshot.markets.clone(), after: after.map(|(_, t)| (t, String::new())) };
        let mut copies = OrderedCopy::start(snapshot, segments, &bound).await?;
        let mut out = Batcher { candles: Vec::with_capacity(batch_size), size: batch_size, encoded: Vec::new() };
        // the newest version so far of the key being read; sent when the next key begins
        let mut held: Option<KalshiCandle> = None;
        while let Some(mut blocks) = copies.next_segment().await? {
            let mut reader = copy::Reader::default();
            while let Some(block) = blocks.recv().await {
                for chunk in block? {
                    reader.push(chunk);
                    while let Some(tuple) = reader.next_tuple::<COLUMNS>()? {
                        let candle = parse(&reader, &tuple, self.period_minutes)?;
                        reader.consume(&tuple);
                        let next_key = held.as_ref().is_some_and(|h| !same_key(h, &candle));
                        if let Some(previous) = held.replace(candle).filter(|_| next_key) {
                            out.push(previous, &mut position, &resume.binding, tx).await?;
                        }
                    }
                }
            }
            reader.finish()?;
        }
        if let Some(last) = held {
            out.push(last, &mut position, &resume.binding, tx).await?;
        }
        if !out.candles.is_empty() {
            let message = out.take(&position, &resume.binding);
            runner::send(tx, message).await?;
        }
        let summary = runner::summary(position.count, &position.hash, snapshot.watermark);
        let message =
            StreamKalshiCandlesResponse { payload: Some(Payload::Summary(summary)), resume_token: String::new() };
        runner::send(tx, message).await
    }
}

/// Candles on their way out.
struct Batcher {
    candles: Vec<KalshiCandle>,
    size: usize,
    encoded: Vec<u8>,
}

impl Batcher {
    /// Adds a candle to the stream's hash, count and position, and sends the batch when it is full.
    async fn push(
        &mut self,
        candle: KalshiCandle,
        position: &mut Position,
        binding: &token::Binding,
        tx: &mpsc::Sender<Result<StreamKalshiCandlesResponse, Status>>,
    ) -> Result<(), Abort> {
        self.encoded.clear();
        candle.encode(&mut self.encoded).expect("a Vec grows");
        position.hash.item(&self.encoded);
        position.count += 1;
        encode_key(&candle, &mut position.key);
        self.candles.push(candle);
        if self.candles.len() == self.size {
            let message = self.take(position, binding);
            runner::send(tx, message).await?;
        }
        Ok(())
    }

    fn take(&mut self, position: &Position, binding: &token::Binding) -> StreamKalshiCandlesResponse {
        let candles = std::mem::replace(&mut self.candles, Vec::with_capacity(self.size));
        StreamKalshiCandlesResponse {
            payload: Some(Payload::Candles(KalshiCandleBatch { candles })),
            resume_token: position.token(Kind::KalshiCandles, binding),
        }
    }
}

/// The SELECT of one run of days: the candles of `period_minutes` whose end is in [start, end), of `markets` (None:
/// every market), at or below `watermark` when set, after the key of a resume position at microsecond `after`
/// when set (its ticker read from the transaction, [`sql::Bound`]); every version, in the order (end_ts, ticker,
/// ingest_seq). Only server-made values are literals.
pub(crate) fn select_sql(
    period_minutes: i32,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    markets: Option<&[String]>,
    watermark: Option<i64>,
    after: Option<i64>,
) -> String {
    let mut sql = format!(
        "SELECT end_ts, ticker, yes_bid_open_micros, yes_bid_high_micros, yes_bid_low_micros, yes_bid_close_micros, \
         yes_ask_open_micros, yes_ask_high_micros, yes_ask_low_micros, yes_ask_close_micros, price_open_micros, \
         price_high_micros, price_low_micros, price_close_micros, price_mean_micros, price_previous_micros, \
         volume_centi, open_interest_centi, ingest_seq FROM kalshi_candles \
         WHERE period_minutes = {period_minutes} AND end_ts >= {} AND end_ts < {}",
        sql::timestamp_literal(start),
        sql::timestamp_literal(end),
    );
    sql.push_str(&sql::ticker_filter("ticker", markets));
    if let Some(watermark) = watermark {
        sql.push_str(&format!(" AND ingest_seq <= {watermark}"));
    }
    if let Some(micros) = after {
        let ts = DateTime::from_timestamp_micros(micros).unwrap_or_default();
        sql.push_str(&format!(
            " AND (end_ts, ticker) > ({}, current_setting('kalshi_replay.after_ticker'))",
            sql::timestamp_literal(ts)
        ));
    }
    sql.push_str(" ORDER BY end_ts, ticker, ingest_seq");
    sql
}

/// The candle of one COPY tuple (columns as in [`select_sql`]).
fn parse(reader: &copy::Reader, tuple: &copy::Tuple<COLUMNS>, period_minutes: i32) -> Result<KalshiCandle, Error> {
    let int = |i: usize| reader.field(tuple, i).and_then(copy::int8);
    let nullable = |i: usize| reader.field_opt(tuple, i).map(copy::int8).transpose();
    let end = copy::timestamp_micros(reader.field(tuple, 0)?)?;
    let end_time = DateTime::<Utc>::from_timestamp_micros(end)
        .ok_or_else(|| Error::Malformed(format!("end_ts out of range: {end}")))?;
    Ok(KalshiCandle {
        market_ticker: copy::text(reader.field(tuple, 1)?)?.to_owned(),
        period_minutes,
        end_time: Some(time::to_proto(end_time)),
        yes_bid_open_micros: int(2)?,
        yes_bid_high_micros: int(3)?,
        yes_bid_low_micros: int(4)?,
        yes_bid_close_micros: int(5)?,
        yes_ask_open_micros: int(6)?,
        yes_ask_high_micros: int(7)?,
        yes_ask_low_micros: int(8)?,
        yes_ask_close_micros: int(9)?,
        price_open_micros: nullable(10)?,
        price_high_micros: nullable(11)?,
        price_low_micros: nullable(12)?,
        price_close_micros: nullable(13)?,
        price_mean_micros: nullable(14)?,
        price_previous_micros: nullable(15)?,
        volume_centi: int(16)?,
        open_interest_centi: int(17)?,
        ingest_seq: int(18)?,
    })
}

fn end_micros(candle: &KalshiCandle) -> i64 {
    candle.end_time.as_ref().map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}

fn same_key(a: &KalshiCandle, b: &KalshiCandle) -> bool {
    end_micros(a) == end_micros(b) && a.market_ticker == b.market_ticker
}

/// The position key of a candle: `end (µs, i64) | ticker`.
fn encode_key(candle: &KalshiCandle, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&end_micros(candle).to_be_bytes());
    out.extend_from_slice(candle.market_ticker.as_bytes());
}

fn decode_key(key: &[u8]) -> Option<(i64, String)> {
    let (end, ticker) = key.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*end), String::from_utf8(ticker.to_vec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_select_reads_one_period_in_order_with_every_filter() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let all = select_sql(60, at("2026-01-05T00:00:00Z"), at("2026-01-06T00:00:00Z"), None, None, None);
        assert!(all.contains("WHERE period_minutes = 60 AND end_ts >= '2026-01-05T00:00:00.000000Z'::timestamptz"));
        assert!(all.ends_with(" ORDER BY end_ts, ticker, ingest_seq"), "{all}");
        let markets = ["A".to_owned()];
        let resumed = select_sql(
            1,
            at("2026-01-05T00:00:00Z"),
            at("2026-01-06T00:00:00Z"),
            Some(&markets),
            Some(42),
            Some(at("2026-01-05T01:00:00Z").timestamp_micros()),
        );
        assert!(resumed.contains(" AND ingest_seq <= 42"), "{resumed}");
        assert!(resumed.contains("(end_ts, ticker) > ('2026-01-05T01:00:00.000000Z'::timestamptz, current_setting("));
        let candle = KalshiCandle {
            market_ticker: "KXA-1".into(),
            end_time: Some(prost_types::Timestamp { seconds: 1_767_574_800, nanos: 0 }),
            ..Default::default()
        };
        let mut key = Vec::new();
        encode_key(&candle, &mut key);
        assert_eq!(decode_key(&key), Some((1_767_574_800_000_000, "KXA-1".to_owned())));
    }
}
