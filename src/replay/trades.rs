//! StreamTrades: every trade of the selected markets in a range, in the order (ts, ticker, trade_id).
//!
//! The trades are read with one `COPY (SELECT ... ORDER BY ts, ticker, trade_id) TO STDOUT (FORMAT binary)`:
//! PostgreSQL walks the day partitions of the range in order through the primary key (or, for one market, the
//! (ticker, ts, trade_id) index) and never sorts. Binary COPY costs the database the least per row and hands
//! each row over as one buffer, which [`copy::Reader`](crate::store::copy::Reader) splits without a per-row allocation.

use std::{collections::HashMap, sync::Arc};

use arrow_array::{ArrayRef, Int8Array, RecordBatch, builder::StringBuilder};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    arrow::{self, IpcStream, TickerDictionary},
    request::{Position, StreamSpec},
    runner::{self, Abort, StreamBody},
    snapshot::{OrderedCopy, Snapshot},
    sql,
};
use crate::{
    error::Error,
    proto::{
        ArrowBatch, Layout, StreamTradesRequest, StreamTradesResponse, Trade, TradeBatch, TradeColumns,
        stream_trades_response::Payload,
    },
    store::copy,
    token::{self, Kind},
};

/// Micro-dollars of a contract's payout; the NO price is this minus the YES price.
const ONE_DOLLAR: i64 = 1_000_000;

/// StreamTrades: a validated request.
#[derive(Debug)]
pub(crate) struct TradeStream {
    spec: StreamSpec,
    layout: Layout,
}

stream_request!(StreamTradesRequest, |request| Self {
    resume_token: String::new(),
    batch_size: 0,
    layout: 0,
    ..request.clone()
});

/// One trade as COPY delivers it; the strings borrow the row's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedTrade<'a> {
    pub micros: i64,
    pub ticker: &'a str,
    pub trade_id: &'a str,
    pub yes_price_micros: i64,
    pub count_centi: i64,
    pub taker_side: i32,
    pub ingest_seq: i64,
}

impl StreamBody for TradeStream {
    type Request = StreamTradesRequest;
    type Response = StreamTradesResponse;
    const KIND: Kind = Kind::Trades;

    fn new(request: &StreamTradesRequest, spec: StreamSpec) -> Result<Self, Error> {
        let layout = match Layout::try_from(request.layout) {
            Ok(Layout::Unspecified | Layout::Rows) => Layout::Rows,
            Ok(Layout::Columns) => Layout::Columns,
            Ok(Layout::Arrow) => Layout::Arrow,
            Err(_) => {
                return Err(Error::invalid(
                    "layout",
                    format!(
                        "unknown value {}; allowed: 0 (rows), LAYOUT_ROWS (1), LAYOUT_COLUMNS (2), LAYOUT_ARROW (3)",
                        request.layout
                    ),
                ));
            }
        };
        Ok(Self { spec, layout })
    }

    fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    /// Reads the trades of `snapshot` and sends batches and the summary into `tx`.
    async fn run(
        self,
        snapshot: &Snapshot,
        tx: &mpsc::Sender<Result<StreamTradesResponse, Status>>,
    ) -> Result<(), Abort> {
        let StreamSpec { selection, batch: batch_size, resume } = self.spec;
        let (mut position, after) = resume.start(snapshot.watermark, decode_key)?;
        let after_micros = after.as_ref().map(|(micros, _, _)| *micros);
        let segments: Vec<String> = sql::day_segments(selection.start, selection.end, after_micros)
            .into_iter()
            .map(|(start, end)| {
                let select = select_sql(
                    start,
                    end,
                    snapshot.markets.as_deref(),
                    snapshot.pinned.then_some(snapshot.watermark),
                    after_micros,
                );
                format!("COPY ({select}) TO STDOUT (FORMAT binary)")
            })
            .collect();
        let bound = sql::Bound {
            markets: snapshot.markets.clone(),
            after: after.map(|(_, ticker, trade_id)| (ticker, trade_id)),
        };
        let mut copies = OrderedCopy::start(snapshot, segments, &bound).await?;
        let mut batch = TradeBatcher::new(self.layout, batch_size)?;
        let mut encoded = Vec::with_capacity(128);
        while let Some(mut blocks) = copies.next_segment().await? {
            let mut reader = copy::Reader::default();
            while let Some(block) = blocks.recv().await {
                for chunk in block? {
                    reader.push(chunk);
                    while let Some(tuple) = reader.next_tuple::<7>()? {
                        let trade = parse(&reader, &tuple)?;
                        encoded.clear();
                        encode_canonical(&trade, &mut encoded);
                        position.hash.item(&encoded);
                        position.count += 1;
                        batch.push(&trade, &encoded);
                        encode_key(&trade, &mut position.key);
                        reader.consume(&tuple);
                        if batch.len == batch_size {
                            let message = batch.take(&position, &resume.binding)?;
                            runner::send(tx, message).await?;
                        }
                    }
                }
            }
            reader.finish()?;
        }
        if batch.len > 0 {
            let message = batch.take(&position, &resume.binding)?;
            runner::send(tx, message).await?;
        }
        let summary = runner::summary(position.count, &position.hash, snapshot.watermark);
        let message = StreamTradesResponse { payload: Some(Payload::Summary(summary)), resume_token: String::new() };
        runner::send(tx, message).await
    }
}

/// The SELECT of a trade stream: the trades of `markets` (None: every market) in [start, end), at or below
/// `watermark` when set, after the key of a resume position at microsecond `after` when set, in the contract's
/// order. COPY takes no parameters: the markets and the position's ticker and trade_id are read from the
/// transaction's settings ([`sql::Bound`], which must be applied on the connection first); only server-made
/// numbers are literals.
pub fn select_sql(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    markets: Option<&[String]>,
    watermark: Option<i64>,
    after: Option<i64>,
) -> String {
    let mut sql = format!(
        "SELECT ts, ticker, trade_id, yes_price_micros, count_centi, taker_side, ingest_seq FROM trades \
         WHERE ts >= {} AND ts < {}",
        sql::timestamp_literal(start),
        sql::timestamp_literal(end),
    );
    sql.push_str(&sql::ticker_filter("ticker", markets));
    if let Some(watermark) = watermark {
        sql.push_str(&format!(" AND ingest_seq <= {watermark}"));
    }
    if let Some(micros) = after {
        let ts = DateTime::from_timestamp_micros(micros).unwrap_or_default();
        sql.push_str(&format!(" AND (ts, ticker, trade_id) > ({}, {})", sql::timestamp_literal(ts), sql::AFTER_KEY));
    }
    sql.push_str(" ORDER BY ts, ticker, trade_id");
    sql
}

/// The trade of one COPY tuple (columns as in [`select_sql`]).
pub(crate) fn parse<'a>(reader: &'a copy::Reader, tuple: &copy::Tuple<7>) -> Result<CopiedTrade<'a>, Error> {
    Ok(CopiedTrade {
        micros: copy::timestamp_micros(reader.field(tuple, 0)?)?,
        ticker: copy::text(reader.field(tuple, 1)?)?,
        trade_id: copy::text(reader.field(tuple, 2)?)?,
        yes_price_micros: copy::int8(reader.field(tuple, 3)?)?,
        count_centi: copy::int8(reader.field(tuple, 4)?)?,
        taker_side: i32::from(copy::int2(reader.field(tuple, 5)?)?),
        ingest_seq: copy::int8(reader.field(tuple, 6)?)?,
    })
}

/// The position key of a trade: `micros (i64) | ticker length (u16) | ticker | trade_id`.
fn encode_key(trade: &CopiedTrade<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&trade.micros.to_be_bytes());
    out.extend_from_slice(&(trade.ticker.len() as u16).to_be_bytes());
    out.extend_from_slice(trade.ticker.as_bytes());
    out.extend_from_slice(trade.trade_id.as_bytes());
}

fn decode_key(key: &[u8]) -> Option<(i64, String, String)> {
    let (micros, rest) = key.split_first_chunk::<8>()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let (ticker, trade_id) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok().filter(|s| !s.contains('\0'));
    Some((i64::from_be_bytes(*micros), text(ticker)?, text(trade_id)?))
}

/// The wire Trade of a row.
pub fn to_proto(trade: &CopiedTrade<'_>) -> Trade {
    Trade {
        trade_id: trade.trade_id.to_owned(),
        market_ticker: trade.ticker.to_owned(),
        time: Some(crate::time::micros_to_proto(trade.micros)),
        yes_price_micros: trade.yes_price_micros,
        no_price_micros: ONE_DOLLAR - trade.yes_price_micros,
        count_centi: trade.count_centi,
        taker_side: trade.taker_side,
        ingest_seq: trade.ingest_seq,
    }
}

/// Appends the canonical encoding of a trade, the bytes the content hash covers: exactly what prost encodes for
/// [`to_proto`] of it (fields in number order, zero values left out), written without building the message.
pub fn encode_canonical(trade: &CopiedTrade<'_>, out: &mut Vec<u8>) {
    fn int(out: &mut Vec<u8>, tag: u8, value: i64) {
        if value != 0 {
            out.push(tag);
            varint(out, value as u64);
        }
    }
    fn string(out: &mut Vec<u8>, tag: u8, value: &str) {
        if !value.is_empty() {
            out.push(tag);
            varint(out, value.len() as u64);
            out.extend_from_slice(value.as_bytes());
        }
    }
    fn int_len(value: i64) -> usize {
        if value == 0 { 0 } else { 1 + (64 - (value as u64 | 1).leading_zeros() as usize).div_ceil(7) }
    }
    string(out, 0x0a, trade.trade_id);
    string(out, 0x12, trade.ticker);
    // the Timestamp message is always present (Some), even when both of its fields are zero
    let time = crate::time::micros_to_proto(trade.micros);
    out.push(0x1a);
    varint(out, (int_len(time.seconds) + int_len(i64::from(time.nanos))) as u64);
    int(out, 0x08, time.seconds);
    int(out, 0x10, i64::from(time.nanos));
    int(out, 0x20, trade.yes_price_micros);
    int(out, 0x28, ONE_DOLLAR - trade.yes_price_micros);
    int(out, 0x30, trade.count_centi);
    int(out, 0x38, i64::from(trade.taker_side));
    int(out, 0x40, trade.ingest_seq);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The columns of a batch being filled, each in its wire form: the packed ones as their varints, the string
/// ones as whole fields (tag, length, bytes).
#[derive(Debug, Default)]
struct ColumnBuffers {
    new_market_tickers: Vec<u8>,
    market_index: Vec<u8>,
    time_micros: Vec<u8>,
    yes_price_micros: Vec<u8>,
    count_centi: Vec<u8>,
    taker_side: Vec<u8>,
    trade_id: Vec<u8>,
    ingest_seq: Vec<u8>,
}

impl ColumnBuffers {
    /// Appends one trade whose market has index `market` in the stream's dictionary.
    fn push(&mut self, trade: &CopiedTrade<'_>, market: u32) {
        varint(&mut self.market_index, u64::from(market));
        varint(&mut self.time_micros, trade.micros as u64);
        varint(&mut self.yes_price_micros, trade.yes_price_micros as u64);
        varint(&mut self.count_centi, trade.count_centi as u64);
        // int32 and enum values are sign-extended to 64 bits on the wire
        varint(&mut self.taker_side, i64::from(trade.taker_side) as u64);
        string_field(&mut self.trade_id, 0x3a, trade.trade_id);
        varint(&mut self.ingest_seq, trade.ingest_seq as u64);
    }

    /// The message's encoding, in field order (a packed column without values is left out, as prost does), and
    /// empty buffers for the next batch.
    fn take(&mut self) -> Vec<u8> {
        fn packed(out: &mut Vec<u8>, tag: u8, values: &[u8]) {
            if !values.is_empty() {
                out.push(tag);
                varint(out, values.len() as u64);
                out.extend_from_slice(values);
            }
        }
        // a packed field's tag and length take at most 11 bytes
        let len = self.all().iter().map(|column| column.len() + 11).sum();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.new_market_tickers);
        packed(&mut out, 0x12, &self.market_index);
        packed(&mut out, 0x1a, &self.time_micros);
        packed(&mut out, 0x22, &self.yes_price_micros);
        packed(&mut out, 0x2a, &self.count_centi);
        packed(&mut out, 0x32, &self.taker_side);
        out.extend_from_slice(&self.trade_id);
        packed(&mut out, 0x42, &self.ingest_seq);
        for column in self.all() {
            column.clear();
        }
        out
    }
}

impl ColumnBuffers {
    fn all(&mut self) -> [&mut Vec<u8>; 8] {
        [
            &mut self.new_market_tickers,
            &mut self.market_index,
            &mut self.time_micros,
            &mut self.yes_price_micros,
            &mut self.count_centi,
            &mut self.taker_side,
            &mut self.trade_id,
            &mut self.ingest_seq,
        ]
    }
}

/// A string field: tag, length, bytes; an empty string too (an element of a repeated field is never left out).
fn string_field(out: &mut Vec<u8>, tag: u8, value: &str) {
    out.push(tag);
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// The columns of an Arrow record batch being filled (LAYOUT_ARROW), in [`arrow::TRADE_SCHEMA`]'s order, and the
/// call's IPC stream.
#[derive(Debug)]
struct TradeArrays {
    time: Vec<i64>,
    market: Vec<i32>,
    trade_id: StringBuilder,
    yes_price_micros: Vec<i64>,
    no_price_micros: Vec<i64>,
    count_centi: Vec<i64>,
    taker_side: Vec<i8>,
    ingest_seq: Vec<i64>,
    tickers: TickerDictionary,
    ipc: IpcStream,
    /// Bytes of trade ids the next batch reserves: the largest batch's so far.
    id_bytes: usize,
}

impl TradeArrays {
    fn new(capacity: usize) -> Result<Self, Error> {
        // trade ids are UUIDs (36 bytes) as Kalshi makes them; a batch of longer ones grows the buffer once
        let id_bytes = capacity * 36;
        Ok(Self {
            time: Vec::with_capacity(capacity),
            market: Vec::with_capacity(capacity),
            trade_id: StringBuilder::with_capacity(capacity, id_bytes),
            yes_price_micros: Vec::with_capacity(capacity),
            no_price_micros: Vec::with_capacity(capacity),
            count_centi: Vec::with_capacity(capacity),
            taker_side: Vec::with_capacity(capacity),
            ingest_seq: Vec::with_capacity(capacity),
            tickers: TickerDictionary::default(),
            ipc: IpcStream::new(&arrow::TRADE_SCHEMA)?,
            id_bytes,
        })
    }

    fn push(&mut self, trade: &CopiedTrade<'_>) {
        self.time.push(trade.micros);
        self.market.push(self.tickers.key(trade.ticker));
        self.trade_id.append_value(trade.trade_id);
        self.yes_price_micros.push(trade.yes_price_micros);
        self.no_price_micros.push(ONE_DOLLAR - trade.yes_price_micros);
        self.count_centi.push(trade.count_centi);
        // the column stores 1 (YES) and 2 (NO), as the table does
        self.taker_side.push(trade.taker_side as i8);
        self.ingest_seq.push(trade.ingest_seq);
    }

    /// The IPC messages of the trades pushed since the last call; the columns start over.
    fn take(&mut self) -> Result<Vec<u8>, Error> {
        self.id_bytes = self.id_bytes.max(self.trade_id.values_slice().len());
        let capacity = self.time.capacity();
        let mut trade_id = std::mem::replace(&mut self.trade_id, StringBuilder::with_capacity(capacity, self.id_bytes));
        let columns: Vec<ArrayRef> = vec![
            arrow::timestamp_column(&mut self.time),
            self.tickers.column(&mut self.market)?,
            Arc::new(trade_id.finish()),
            arrow::int64_column(&mut self.yes_price_micros),
            arrow::int64_column(&mut self.no_price_micros),
            arrow::int64_column(&mut self.count_centi),
            Arc::new(Int8Array::new(arrow::take(&mut self.taker_side).into(), None)),
            arrow::int64_column(&mut self.ingest_seq),
        ];
        let batch = RecordBatch::try_new(arrow::TRADE_SCHEMA.clone(), columns)?;
        self.ipc.encode(&batch)
    }
}

/// The data message being filled, in the request's layout.
struct TradeBatcher {
    layout: Layout,
    /// The rows layout's TradeBatch, encoded.
    rows: Vec<u8>,
    columns: ColumnBuffers,
    /// The stream's dictionary of market tickers (columns layout).
    dictionary: HashMap<String, u32>,
    /// The Arrow layout's columns and IPC stream.
    arrow: Option<TradeArrays>,
    len: usize,
    capacity: usize,
}

impl TradeBatcher {
    fn new(layout: Layout, capacity: usize) -> Result<Self, Error> {
        Ok(Self {
            layout,
            rows: if layout == Layout::Rows { Vec::with_capacity(capacity * 128) } else { Vec::new() },
            columns: ColumnBuffers::default(),
            dictionary: HashMap::new(),
            arrow: if layout == Layout::Arrow { Some(TradeArrays::new(capacity)?) } else { None },
            len: 0,
            capacity,
        })
    }

    /// Adds a trade whose canonical encoding is `encoded`.
    fn push(&mut self, trade: &CopiedTrade<'_>, encoded: &[u8]) {
        self.len += 1;
        if let Some(arrow) = &mut self.arrow {
            arrow.push(trade);
            return;
        }
        if self.layout != Layout::Columns {
            // the repeated field `trades = 1` of TradeBatch: tag, length, the Trade's encoding
            self.rows.push(0x0a);
            varint(&mut self.rows, encoded.len() as u64);
            self.rows.extend_from_slice(encoded);
            return;
        }
        let index = match self.dictionary.get(trade.ticker) {
            Some(&i) => i,
            None => {
                let i = self.dictionary.len() as u32;
                self.dictionary.insert(trade.ticker.to_owned(), i);
                string_field(&mut self.columns.new_market_tickers, 0x0a, trade.ticker);
                i
            }
        };
        self.columns.push(trade, index);
    }

    /// The filled message with the token that resumes after `position`; the batch starts over.
    fn take(&mut self, position: &Position, binding: &token::Binding) -> Result<StreamTradesResponse, Error> {
        let resume_token = position.token(Kind::Trades, binding);
        self.len = 0;
        let payload = match (&mut self.arrow, self.layout) {
            (Some(arrow), _) => Payload::Arrow(ArrowBatch { ipc: arrow.take()? }),
            (None, Layout::Columns) => Payload::Columns(TradeColumns::from_encoded(self.columns.take())),
            (None, _) => {
                let encoded = std::mem::replace(&mut self.rows, Vec::with_capacity(self.capacity * 128));
                Payload::Trades(TradeBatch::from_encoded(encoded))
            }
        };
        Ok(StreamTradesResponse { payload: Some(payload), resume_token })
    }
}

#[cfg(test)]
mod tests {
    use crate::replay::hash::ContentHash;
    use prost::Message;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn test_binding() -> token::Binding {
        token::TokenKey::new(&[0; 32]).expect("key").binding(b"")
    }

    fn random_trade<'a>(rng: &mut impl Rng, ticker: &'a str, trade_id: &'a str) -> CopiedTrade<'a> {
        CopiedTrade {
            // years 1 to 9999, including before 1970 and exact seconds
            micros: match rng.random_range(0..4) {
                0 => 0,
                1 => rng.random_range(-62_135_596_800i64..253_402_300_799) * 1_000_000,
                _ => rng.random_range(-62_135_596_800_000_000i64..253_402_300_799_999_999),
            },
            ticker,
            trade_id,
            yes_price_micros: rng.random_range(1..1_000_000),
            count_centi: rng.random_range(1..i64::MAX),
            taker_side: rng.random_range(0..3),
            ingest_seq: rng.random_range(0..i64::MAX),
        }
    }

    #[test]
    fn the_canonical_encoding_is_what_prost_encodes() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let long = "T".repeat(200);
        for i in 0..5_000 {
            let ticker = ["KXBTC-26JAN05-T100000", "", long.as_str()][i % 3];
            let id = ["7f0c3a52-6a39-4f87-9a3c-4f2f1b9d1e55", ""][i % 2];
            let trade = random_trade(&mut rng, ticker, id);
            let mut ours = Vec::new();
            encode_canonical(&trade, &mut ours);
            assert_eq!(ours, to_proto(&trade).encode_to_vec(), "{trade:?}");
        }
    }

    #[test]
    fn an_encoded_batch_decodes_to_its_trades() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut batch = TradeBatcher::new(Layout::Rows, 10).expect("batcher");
        let mut expected = Vec::new();
        for i in 0..10 {
            let id = format!("id-{i}");
            let trade = random_trade(&mut rng, "KXA", &id);
            let mut encoded = Vec::new();
            encode_canonical(&trade, &mut encoded);
            batch.push(&trade, &encoded);
            expected.push(to_proto(&trade));
        }
        let position = Position { watermark: 1, count: 10, hash: ContentHash::default(), key: Vec::new() };
        let message = batch.take(&position, &test_binding()).expect("encodes");
        let decoded = StreamTradesResponse::decode(message.encode_to_vec().as_slice()).expect("decodes");
        match decoded.payload {
            Some(Payload::Trades(batch)) => assert_eq!(batch.trades, expected),
            other => panic!("{other:?}"),
        }
        assert_eq!(batch.len, 0, "the batch starts over");
    }

    /// The hand-encoded columns decode to the trades' values and are byte for byte what prost encodes for them,
    /// across batches that share the stream's dictionary.
    #[test]
    fn encoded_columns_are_what_prost_encodes_for_their_values() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let tickers = ["KXA", "KXB-26JAN05", "", "KXC"];
        let ids: Vec<String> = (0..40).map(|i| if i % 7 == 0 { String::new() } else { format!("id-{i}") }).collect();
        let mut batch = TradeBatcher::new(Layout::Columns, 16).expect("batcher");
        let mut dictionary: Vec<String> = Vec::new();
        let position = Position { watermark: 1, count: 0, hash: ContentHash::default(), key: Vec::new() };
        for chunk in ids.chunks(16) {
            let mut expected = TradeColumns::default();
            for (i, id) in chunk.iter().enumerate() {
                let mut trade = random_trade(&mut rng, tickers[(i * 3 + id.len()) % tickers.len()], id);
                trade.taker_side = [-1, 0, 1, 2][i % 4];
                batch.push(&trade, &[]);
                let index = match dictionary.iter().position(|t| t == trade.ticker) {
                    Some(i) => i as u32,
                    None => {
                        dictionary.push(trade.ticker.to_owned());
                        expected.new_market_tickers.push(trade.ticker.to_owned());
                        dictionary.len() as u32 - 1
                    }
                };
                expected.market_index.push(index);
                expected.time_micros.push(trade.micros);
                expected.yes_price_micros.push(trade.yes_price_micros);
                expected.count_centi.push(trade.count_centi);
                expected.taker_side.push(trade.taker_side);
                expected.trade_id.push(id.clone());
                expected.ingest_seq.push(trade.ingest_seq);
            }
            let message = batch.take(&position, &test_binding()).expect("encodes");
            let Some(Payload::Columns(columns)) = &message.payload else { panic!("{message:?}") };
            let bytes = columns.encode_to_vec();
            assert_eq!(bytes, expected.encode_to_vec(), "the wire form of the generated message");
            assert_eq!(TradeColumns::decode(bytes.as_slice()).expect("decodes"), expected);
        }
        let empty = batch.take(&position, &test_binding()).expect("encodes");
        let Some(Payload::Columns(columns)) = &empty.payload else { panic!("{empty:?}") };
        assert!(columns.encode_to_vec().is_empty(), "an empty batch encodes to nothing, as prost's does");
    }
}
