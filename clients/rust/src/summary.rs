//! The check of a replay's final summary against what the client delivered.
//!
//! The server's summary counts and hashes every item of the whole request, across resumptions: SHA-256 over each
//! item's canonical protobuf encoding (as prost writes it: fields in number order, zero values omitted), each
//! prefixed by its length as a little-endian u32. The client computes the same over the items it handed out, so a
//! resumed stream that skipped or repeated an item, or a server and client that disagree on an item, is an error
//! instead of a silently different backtest.

use sha2::{Digest, Sha256};

use crate::{Error, proto::StreamSummary};

/// A running count and content hash of delivered items.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checker {
    count: i64,
    /// None when only counting.
    hash: Option<Sha256>,
    /// False when the stream continues one that another client began: its summary covers items never seen here.
    checking: bool,
    /// Reused for each item's encoding.
    scratch: Vec<u8>,
}

impl Checker {
    /// A checker of count and content hash (rows).
    pub(crate) fn new() -> Self {
        Self { hash: Some(Sha256::new()), checking: true, ..Self::default() }
    }

    /// A checker of the count only (Arrow batches, whose rows are not re-encoded: see the crate docs).
    pub(crate) fn count_only() -> Self {
        Self { checking: true, ..Self::default() }
    }

    /// A checker that checks nothing (a request that carried its own resume token).
    pub(crate) fn unchecked() -> Self {
        Self::default()
    }

    /// Adds one delivered item.
    pub(crate) fn item<M: prost::Message>(&mut self, item: &M) {
        self.count += 1;
        if let Some(hash) = &mut self.hash {
            self.scratch.clear();
            item.encode(&mut self.scratch).expect("a Vec grows as needed");
            hash.update((self.scratch.len() as u32).to_le_bytes());
            hash.update(&self.scratch);
        }
    }

    /// Adds `rows` delivered items whose content is not hashed.
    pub(crate) fn rows(&mut self, rows: usize) {
        self.count += rows as i64;
    }

    /// Items delivered so far.
    pub(crate) fn count(&self) -> i64 {
        self.count
    }

    /// The SHA-256 of what was delivered, or None when only counting.
    pub(crate) fn digest(&self) -> Option<[u8; 32]> {
        self.hash.as_ref().map(|hash| hash.clone().finalize().into())
    }

    /// Ok when `summary` matches what was delivered; [`Error::SummaryMismatch`] naming the difference otherwise.
    pub(crate) fn check(&self, summary: &StreamSummary) -> Result<(), Error> {
        if !self.checking {
            return Ok(());
        }
        if summary.item_count != self.count {
            return Err(Error::SummaryMismatch(format!(
                "the server counted {} items, the client delivered {}",
                summary.item_count, self.count
            )));
        }
        if let Some(digest) = self.digest()
            && summary.content_hash.as_slice() != digest.as_slice()
        {
            return Err(Error::SummaryMismatch(format!(
                "content hash: the server's is {}, the client's {}",
                hex(&summary.content_hash),
                hex(&digest)
            )));
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Trade;

    fn trade(id: &str, price: i64) -> Trade {
        Trade {
            trade_id: id.to_owned(),
            market_ticker: "KXT-1".to_owned(),
            time: Some(prost_types::Timestamp { seconds: 1_767_571_200, nanos: 5_000 }),
            yes_price_micros: price,
            no_price_micros: 1_000_000 - price,
            count_centi: 300,
            taker_side: 1,
            ingest_seq: 7,
        }
    }

    fn summary_of(items: &[Trade]) -> StreamSummary {
        // the contract's hash, computed here from its definition
        let mut hash = Sha256::new();
        for item in items {
            let encoded = prost::Message::encode_to_vec(item);
            hash.update((encoded.len() as u32).to_le_bytes());
            hash.update(&encoded);
        }
        StreamSummary { item_count: items.len() as i64, content_hash: hash.finalize().to_vec(), watermark: 9 }
    }

    #[test]
    fn the_same_items_pass_and_the_empty_stream_hashes_like_the_empty_string() {
        let items = [trade("a", 420_000), trade("b", 430_000)];
        let mut checker = Checker::new();
        items.iter().for_each(|t| checker.item(t));
        checker.check(&summary_of(&items)).expect("same items");
        assert_eq!(Checker::new().digest().expect("hashing")[..], Sha256::digest(b"")[..]);
        Checker::new().check(&summary_of(&[])).expect("empty stream");
    }

    #[test]
    fn a_changed_missing_or_repeated_item_is_a_mismatch() {
        let items = [trade("a", 420_000), trade("b", 430_000)];
        let summary = summary_of(&items);
        let cases: [(&str, Vec<Trade>); 4] = [
            ("changed price", vec![trade("a", 420_000), trade("b", 430_001)]),
            ("missing", vec![trade("a", 420_000)]),
            ("repeated", vec![trade("a", 420_000), trade("a", 420_000), trade("b", 430_000)]),
            ("swapped", vec![trade("b", 430_000), trade("a", 420_000)]),
        ];
        for (what, delivered) in cases {
            let mut checker = Checker::new();
            delivered.iter().for_each(|t| checker.item(t));
            let err = checker.check(&summary).expect_err(what);
            assert!(matches!(err, Error::SummaryMismatch(_)), "{what}: {err:?}");
            assert_eq!(err.code(), tonic::Code::DataLoss, "{what}");
            let field = if delivered.len() == items.len() { "content hash" } else { "counted 2 items" };
            assert!(err.message().contains(field), "{what}: {}", err.message());
        }
    }

    #[test]
    fn a_stream_begun_elsewhere_is_not_checked() {
        let mut checker = Checker::unchecked();
        checker.item(&trade("b", 430_000));
        checker.check(&summary_of(&[trade("a", 420_000), trade("b", 430_000)])).expect("not checked");
    }

    #[test]
    fn counting_only_checks_the_count() {
        let summary = summary_of(&[trade("a", 420_000), trade("b", 430_000)]);
        let mut checker = Checker::count_only();
        checker.rows(2);
        checker.check(&summary).expect("two rows");
        checker.rows(1);
        assert!(matches!(checker.check(&summary), Err(Error::SummaryMismatch(_))));
    }
}
