//! The two batch messages of StreamTrades, `TradeBatch` and `TradeColumns`, written by hand rather than
//! generated (build.rs maps them here with `extern_path`), so that the server can send bytes it has already
//! encoded. Decoding gives the same public fields a generated message would; the wire format is the proto's.

use super::Trade;

/// The `TradeBatch` message (rows layout), written by hand rather than generated so that the server sends the
/// trades it has already encoded for the content hash instead of building a `Trade` per row and encoding it
/// again: that measured a fifth of the server's work per trade. A decoded batch (a client's) has its trades in
/// `trades`, as a generated message would; the wire format is the proto's.
#[derive(Clone, PartialEq, Default)]
pub struct TradeBatch {
    /// Trades in stream order.
    pub trades: Vec<Trade>,
    /// More trades, already encoded as the repeated field `trades = 1` (sent after `trades`).
    encoded: Vec<u8>,
}

impl TradeBatch {
    /// A batch of trades already encoded as the repeated field `trades = 1`.
    pub(crate) fn from_encoded(encoded: Vec<u8>) -> Self {
        Self { trades: Vec::new(), encoded }
    }
}

impl std::fmt::Debug for TradeBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TradeBatch").field("trades", &self.trades).field("encoded_bytes", &self.encoded.len()).finish()
    }
}

impl prost::Message for TradeBatch {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        for trade in &self.trades {
            prost::encoding::message::encode(1, trade, buf);
        }
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => prost::encoding::message::merge_repeated(wire_type, &mut self.trades, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        prost::encoding::message::encoded_len_repeated(1, &self.trades) + self.encoded.len()
    }

    fn clear(&mut self) {
        self.trades.clear();
        self.encoded.clear();
    }
}

/// The `TradeColumns` message (columns layout), written by hand for the same reason as [`TradeBatch`]: the server
/// appends each trade's values to per-column buffers, already in their wire form (packed varints, length-prefixed
/// strings), instead of collecting a `String` per trade id and having prost measure and encode every column
/// again. A decoded message (a client's) has its values in the public fields, as the generated message would;
/// the wire format is the proto's.
#[derive(Clone, PartialEq, Default)]
pub struct TradeColumns {
    /// Market tickers first used in this batch, appended to the stream's dictionary.
    pub new_market_tickers: Vec<String>,
    /// Index into the stream's dictionary of market tickers.
    pub market_index: Vec<u32>,
    /// Trade time, microseconds since the Unix epoch, UTC.
    pub time_micros: Vec<i64>,
    /// YES price, micro-dollars.
    pub yes_price_micros: Vec<i64>,
    /// Contracts, centi-contracts.
    pub count_centi: Vec<i64>,
    /// Taker side (Side enum numbers).
    pub taker_side: Vec<i32>,
    /// Trade ids.
    pub trade_id: Vec<String>,
    /// Data version of each trade.
    pub ingest_seq: Vec<i64>,
    /// More columns, already encoded (sent after the fields above).
    encoded: Vec<u8>,
}

impl TradeColumns {
    /// A message of columns already encoded in their wire form, in field order.
    pub(crate) fn from_encoded(encoded: Vec<u8>) -> Self {
        Self { encoded, ..Self::default() }
    }
}

impl std::fmt::Debug for TradeColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TradeColumns")
            .field("new_market_tickers", &self.new_market_tickers)
            .field("market_index", &self.market_index)
            .field("time_micros", &self.time_micros)
            .field("yes_price_micros", &self.yes_price_micros)
            .field("count_centi", &self.count_centi)
            .field("taker_side", &self.taker_side)
            .field("trade_id", &self.trade_id)
            .field("ingest_seq", &self.ingest_seq)
            .field("encoded_bytes", &self.encoded.len())
            .finish()
    }
}

impl prost::Message for TradeColumns {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        use prost::encoding::{int32, int64, string, uint32};
        string::encode_repeated(1, &self.new_market_tickers, buf);
        uint32::encode_packed(2, &self.market_index, buf);
        int64::encode_packed(3, &self.time_micros, buf);
        int64::encode_packed(4, &self.yes_price_micros, buf);
        int64::encode_packed(5, &self.count_centi, buf);
        int32::encode_packed(6, &self.taker_side, buf);
        string::encode_repeated(7, &self.trade_id, buf);
        int64::encode_packed(8, &self.ingest_seq, buf);
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{int32, int64, string, uint32};
        match tag {
            1 => string::merge_repeated(wire_type, &mut self.new_market_tickers, buf, ctx),
            2 => uint32::merge_repeated(wire_type, &mut self.market_index, buf, ctx),
            3 => int64::merge_repeated(wire_type, &mut self.time_micros, buf, ctx),
            4 => int64::merge_repeated(wire_type, &mut self.yes_price_micros, buf, ctx),
            5 => int64::merge_repeated(wire_type, &mut self.count_centi, buf, ctx),
            6 => int32::merge_repeated(wire_type, &mut self.taker_side, buf, ctx),
            7 => string::merge_repeated(wire_type, &mut self.trade_id, buf, ctx),
            8 => int64::merge_repeated(wire_type, &mut self.ingest_seq, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{int32, int64, string, uint32};
        string::encoded_len_repeated(1, &self.new_market_tickers)
            + uint32::encoded_len_packed(2, &self.market_index)
            + int64::encoded_len_packed(3, &self.time_micros)
            + int64::encoded_len_packed(4, &self.yes_price_micros)
            + int64::encoded_len_packed(5, &self.count_centi)
            + int32::encoded_len_packed(6, &self.taker_side)
            + string::encoded_len_repeated(7, &self.trade_id)
            + int64::encoded_len_packed(8, &self.ingest_seq)
            + self.encoded.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}
