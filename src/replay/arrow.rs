//! LAYOUT_ARROW: the Arrow schemas of StreamTrades and StreamCandles, the market-ticker dictionary and the IPC
//! stream writer both share (see ArrowBatch in replay.proto, which documents the same schemas for clients).
//!
//! One call's data messages are one Arrow IPC stream: the writer is made at the start of a call, the schema
//! message goes out in front of the first record batch, and each later message carries a delta of the
//! market_ticker dictionary (the tickers new to the call, if any) and one record batch. The stream bodies fill
//! plain vectors per column from the rows they already decode; [`TickerDictionary`] turns tickers into keys
//! and [`IpcStream`] encodes a finished batch.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
};

use arrow_array::{
    ArrayRef, DictionaryArray, Int32Array, RecordBatch,
    builder::StringBuilder,
    types::{Int32Type, TimestampMicrosecondType},
};
use arrow_ipc::writer::{DictionaryHandling, IpcWriteOptions, StreamWriter};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::Error;

/// The time zone of every timestamp column.
const UTC: &str = "UTC";

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

fn ticker_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The schema of StreamTrades, in replay.proto's ArrowBatch: one row per trade, no column nullable.
pub static TRADE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("time", timestamp(), false),
        Field::new("market_ticker", ticker_dictionary(), false),
        Field::new("trade_id", DataType::Utf8, false),
        Field::new("yes_price_micros", DataType::Int64, false),
        Field::new("no_price_micros", DataType::Int64, false),
        Field::new("count_centi", DataType::Int64, false),
        Field::new("taker_side", DataType::Int8, false),
        Field::new("ingest_seq", DataType::Int64, false),
    ]))
});

/// The schema of StreamCandles, in replay.proto's ArrowBatch: one row per candle; previous_micros is null where
/// the Candle's is unset.
pub static CANDLE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        Field::new("period_start", timestamp(), false),
        Field::new("period_end", timestamp(), false),
        Field::new("market_ticker", ticker_dictionary(), false),
        int("open_micros"),
        int("high_micros"),
        int("low_micros"),
        int("close_micros"),
        int("volume_centi"),
        int("trade_count"),
        int("vwap_micros"),
        Field::new("previous_micros", DataType::Int64, true),
        Field::new("empty", DataType::Boolean, false),
        Field::new("partial", DataType::Boolean, false),
    ]))
});

/// A timestamp column (microseconds, UTC) of the values in `micros`, which is left empty with the same capacity.
pub fn timestamp_column(micros: &mut Vec<i64>) -> ArrayRef {
    Arc::new(arrow_array::PrimitiveArray::<TimestampMicrosecondType>::new(take(micros).into(), None).with_timezone(UTC))
}

/// An int64 column of `values`, which is left empty with the same capacity.
pub fn int64_column(values: &mut Vec<i64>) -> ArrayRef {
    Arc::new(arrow_array::Int64Array::new(take(values).into(), None))
}

/// The values of a column being filled, moved out into an array's buffer (without a copy); a vector of the same
/// capacity is left for the next batch, so filling one never grows a vector step by step.
pub fn take<T>(values: &mut Vec<T>) -> Vec<T> {
    let capacity = values.capacity();
    std::mem::replace(values, Vec::with_capacity(capacity))
}

/// The market tickers of one call: each new ticker gets the next key, and the dictionary of a batch is every
/// ticker so far, so that the IPC writer sends only the new ones (a delta).
#[derive(Debug, Default)]
pub struct TickerDictionary {
    keys: HashMap<Box<str>, i32>,
    /// Every ticker so far, in key order.
    values: StringBuilder,
    /// `values` as an array, made again only after a new ticker: the writer sees the same array and sends no
    /// dictionary message at all while no ticker is new.
    array: Option<ArrayRef>,
    /// The key of the previous ticker looked up: a stream of one market, or a run of one market's trades, skips
    /// the hash.
    last: Option<i32>,
}

impl TickerDictionary {
    /// The key of `ticker`, a new one if the call has not seen it.
    pub fn key(&mut self, ticker: &str) -> i32 {
        if let Some(last) = self.last
            && self.ticker(last) == ticker.as_bytes()
        {
            return last;
        }
        let key = match self.keys.get(ticker) {
            Some(&key) => key,
            None => {
                // a selection has at most max_selection_markets markets, far below i32::MAX
                let key = self.keys.len() as i32;
                self.keys.insert(ticker.into(), key);
                self.values.append_value(ticker);
                self.array = None;
                key
            }
        };
        self.last = Some(key);
        key
    }

    fn ticker(&self, key: i32) -> &[u8] {
        let offsets = self.values.offsets_slice();
        let key = key as usize;
        &self.values.values_slice()[offsets[key] as usize..offsets[key + 1] as usize]
    }

    /// The market_ticker column of `keys` (from [`key`](Self::key)), which is left empty with the same capacity.
    pub fn column(&mut self, keys: &mut Vec<i32>) -> Result<ArrayRef, Error> {
        let values = self.array.get_or_insert_with(|| Arc::new(self.values.finish_cloned())).clone();
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(Int32Array::new(take(keys).into(), None), values)?))
    }
}

/// The Arrow IPC stream of one call (streaming format, without the end-of-stream marker: a cut stream and a
/// complete one look the same, the summary tells them apart).
pub struct IpcStream {
    writer: StreamWriter<Vec<u8>>,
}

impl std::fmt::Debug for IpcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcStream").field("pending_bytes", &self.writer.get_ref().len()).finish()
    }
}

impl IpcStream {
    /// A stream of `schema`; its schema message goes out with the first batch.
    pub fn new(schema: &Schema) -> Result<Self, Error> {
        let options = IpcWriteOptions::default().with_dictionary_handling(DictionaryHandling::Delta);
        Ok(Self { writer: StreamWriter::try_new_with_options(Vec::new(), schema, options)? })
    }

    /// The IPC messages of `batch`: the schema first if nothing was sent yet, the dictionary delta of its
    /// market_ticker column when it has new tickers, and the record batch.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, Error> {
        self.writer.write(batch)?;
        let written = self.writer.get_mut();
        // the next message is about as large as this one: one allocation each, no growth step by step
        let capacity = written.len() + written.len() / 8;
        Ok(std::mem::replace(written, Vec::with_capacity(capacity)))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{Array, Int64Array, StringArray, cast::AsArray};
    use arrow_ipc::reader::StreamReader;

    use super::*;

    /// Three batches through one stream, read back by arrow-rs's reader over the concatenated bytes: the
    /// schema once, the dictionary deltas, and every batch's keys resolving to its tickers.
    #[test]
    fn an_ipc_stream_of_batches_with_new_tickers_reads_back() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("market_ticker", ticker_dictionary(), false),
            Field::new("n", DataType::Int64, false),
        ]));
        let mut stream = IpcStream::new(&schema).expect("writer");
        let mut dictionary = TickerDictionary::default();
        let batches = [vec!["B", "A", "B"], vec!["B", "B"], vec!["C", "A", ""]];
        let mut messages = Vec::new();
        for (i, tickers) in batches.iter().enumerate() {
            let mut keys: Vec<i32> = tickers.iter().map(|t| dictionary.key(t)).collect();
            let mut n: Vec<i64> = (0..tickers.len() as i64).map(|x| x + 10 * i as i64).collect();
            let columns = vec![dictionary.column(&mut keys).expect("column"), int64_column(&mut n)];
            let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
            messages.push(stream.encode(&batch).expect("encodes"));
        }
        assert!(messages[1].len() < messages[2].len(), "no dictionary message without a new ticker");
        let bytes = messages.concat();
        let reader = StreamReader::try_new(bytes.as_slice(), None).expect("a stream");
        let mut read = 0;
        for (i, batch) in reader.enumerate() {
            let batch = batch.expect("a batch");
            let tickers = batch.column(0).as_dictionary::<Int32Type>();
            let values = tickers.values().as_any().downcast_ref::<StringArray>().expect("utf8");
            let got: Vec<&str> = tickers.keys().values().iter().map(|&k| values.value(k as usize)).collect();
            assert_eq!(got, batches[i]);
            let n = batch.column(1).as_any().downcast_ref::<Int64Array>().expect("int64");
            assert_eq!(n.len(), batches[i].len());
            assert_eq!(n.value(0), 10 * i as i64);
            read += 1;
        }
        assert_eq!(read, 3);
    }

    #[test]
    fn repeated_tickers_keep_their_keys() {
        let mut dictionary = TickerDictionary::default();
        let keys: Vec<i32> = ["X", "Y", "Y", "X", "Z", "Y"].iter().map(|t| dictionary.key(t)).collect();
        assert_eq!(keys, [0, 1, 1, 0, 2, 1]);
    }
}
