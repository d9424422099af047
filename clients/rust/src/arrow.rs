//! LAYOUT_ARROW: each data message's bytes fed to an Arrow IPC stream decoder, one record batch out per message.
//!
//! The bytes of one call's data messages are one Arrow IPC stream (schema first, then per message the market
//! ticker dictionary's delta and one record batch); a resumed call is a new IPC stream, so the decoder starts
//! again with each call. The rows are counted against the summary, not re-encoded into protobuf rows to be
//! hashed: that would be the per-row work this layout exists to avoid, and the summary's hash is the server's
//! over the same rows it encoded (see the crate docs).

use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use futures_util::StreamExt;

use crate::{
    Error,
    proto::StreamSummary,
    replay::{Data, Next, Replay, Resumer, Rpc},
    summary::Checker,
};

/// The record batches of a replay in LAYOUT_ARROW, one per data message, in stream order.
pub(crate) fn batches<R: Rpc>(resumer: Resumer<R>) -> Replay<RecordBatch> {
    struct State<R: Rpc> {
        resumer: Resumer<R>,
        decoder: StreamDecoder,
        /// The call the decoder reads.
        call: u64,
        checker: Checker,
        summary: Arc<OnceLock<StreamSummary>>,
    }

    let summary = Arc::new(OnceLock::new());
    let checker = if resumer.continues_another() { Checker::unchecked() } else { Checker::count_only() };
    let state = Box::new(State { resumer, decoder: StreamDecoder::new(), call: 0, checker, summary: summary.clone() });
    let batches = futures_util::stream::try_unfold(state, |mut state| async move {
        match state.resumer.next(state.checker.count()).await? {
            Some(Next::Data { data: Data::Arrow(ipc), call }) => {
                if call != state.call {
                    state.decoder = StreamDecoder::new();
                    state.call = call;
                }
                let batch = decode_one(&mut state.decoder, Buffer::from(ipc))?;
                state.checker.rows(batch.num_rows());
                Ok(Some((batch, state)))
            }
            Some(Next::Data { data: Data::Rows(_), .. }) => {
                Err(Error::Protocol(format!("rows in an Arrow stream of {}", R::NAME)))
            }
            Some(Next::Summary(summary)) => {
                state.checker.check(&summary)?;
                let _ = state.summary.set(summary);
                Ok(None)
            }
            None => Ok(None),
        }
    });
    Replay::new(batches.boxed(), summary)
}

/// The one record batch of a data message (after the schema and dictionary messages it may carry).
fn decode_one(decoder: &mut StreamDecoder, mut ipc: Buffer) -> Result<RecordBatch, Error> {
    let mut batch = None;
    while !ipc.is_empty() {
        let decoded = decoder.decode(&mut ipc).map_err(|e| Error::Protocol(format!("Arrow IPC: {e}")))?;
        if let Some(decoded) = decoded
            && batch.replace(decoded).is_some()
        {
            return Err(Error::Protocol("two record batches in one data message".to_owned()));
        }
    }
    batch.ok_or_else(|| Error::Protocol("a data message without a whole record batch".to_owned()))
}
