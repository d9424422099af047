//! `kalshi-replay import`: Kalshi's own JSON files into the database, through the same write core as
//! IngestService ([`crate::ingest`]).
//!
//! - Inputs: files, or directories (all their files, recursively, in path order; names starting with `.` are
//!   skipped). Each file is gzip, zstd or plain, told by its first bytes.
//! - Formats, told by the name without its compression suffix: `*.json` is one JSON document (a REST page,
//!   with or without its `cursor` envelope, read whole); anything else is JSON lines (WebSocket messages with a
//!   receive time, or REST objects), read line by line. [`kalshi`] converts the shapes and units.
//! - One file is one write: validated like an RPC's items, committed whole, and skipped items are counted. A
//!   malformed line or item stops the import with its file and line (files committed before it stay), or, with
//!   `--skip-bad`, is counted and logged. Re-running an import stores nothing new: facts are keyed, reference rows
//!   last-writer-wins.
//! - A reader thread per file parses while the database writes: a bounded channel of chunks of lines between
//!   them keeps memory flat whatever the file's size (JSON documents excepted: read whole).
//! - Limits ([`Limits`]): a line (or a whole JSON document) longer than `max_import_line_bytes`, a file that
//!   decompresses to more than `max_import_file_bytes`, or a file of more than `max_rows_per_write` items stops
//!   the import at that file and line, `--skip-bad` or not: no line is ever held whole past the first limit, and
//!   a compressed bomb is read no further than the second. Items are checked against the same bounds as
//!   IngestService's (counts, fact times, updated_time); those are bad items, which `--skip-bad` skips.
//! - Progress: a bar with rows/s and ETA (by input bytes) on a terminal, a log line every few seconds otherwise.

pub mod kalshi;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;

use self::kalshi::Record;
pub use crate::progress::ProgressMode;
use crate::progress::{Progress, Unit};
use crate::{
    error::Error,
    ingest::{
        validate::{self, At, Bounds},
        write::{self, PendingWrite, RowBuffer, Stored},
    },
    limits::Limits,
    store::db::Pool,
};

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files and directories.
    pub paths: Vec<PathBuf>,
    /// Count and log malformed lines and invalid items instead of stopping at the first.
    pub skip_bad: bool,
    /// How progress is shown.
    pub progress: ProgressMode,
    /// The limits of lines, files, writes and items.
    pub limits: Limits,
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Files imported.
    pub files: u64,
    /// Input bytes read (compressed size).
    pub bytes: u64,
    /// Lines read (a JSON document counts its lines too).
    pub lines: u64,
    /// Items found, per table: `trades`, `orderbook_snapshots`, ...
    pub stored: BTreeMap<&'static str, Stored>,
    /// Lines or items skipped as malformed or invalid (`--skip-bad`).
    pub bad: u64,
    /// Messages of kinds the service does not store, per kind (e.g. `ticker`, `subscribed`).
    pub ignored: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// Rows sent to the database (stored or skipped as already there).
    pub fn rows(&self) -> i64 {
        self.stored.values().map(|s| s.inserted + s.updated + s.skipped).sum()
    }

    /// One line per table and the totals, for the command line.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "imported {} files ({} bytes, {} lines) in {:.1} s: {} rows, {:.0} rows/s\n",
            self.files,
            self.bytes,
            self.lines,
            self.elapsed.as_secs_f64(),
            self.rows(),
            self.rows() as f64 / self.elapsed.as_secs_f64().max(1e-9),
        );
        out.push_str(&write::table_lines(&self.stored));
        if self.bad > 0 {
            out.push_str(&format!("  skipped as bad: {}\n", self.bad));
        }
        for (kind, n) in &self.ignored {
            out.push_str(&format!("  ignored {kind} messages: {n}\n"));
        }
        out
    }
}

/// The files of `paths`: files as given, directories expanded recursively in path order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("read directory {}", dir.display()), e))?;
        let mut paths: Vec<PathBuf> = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(format!("read directory {}", dir.display()), e))?;
        paths.retain(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
        paths.sort();
        for path in paths {
            if path.is_dir() { walk(&path, out)? } else { out.push(path) }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if meta.is_dir() { walk(path, &mut out)? } else { out.push(path.clone()) }
    }
    Ok(out)
}

/// The name of `path` without a compression suffix ends in `.json`: one document, not JSON lines.
fn is_document(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name = [".gz", ".zst", ".zstd"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
    name.ends_with(".json")
}

/// Counts the bytes read from the file, for progress.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens `path`, decompressing gzip (also concatenated members) or zstd as its first bytes say.
fn open(path: &Path, read: Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>, Error> {
    let file = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut raw = BufReader::with_capacity(1 << 16, Counting { inner: file, read });
    let head = raw.fill_buf().map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(1 << 16, flate2::bufread::MultiGzDecoder::new(raw)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::stream::read::Decoder::with_buffer(raw)
            .map_err(|e| Error::io(format!("read zstd {}", path.display()), e))?;
        Box::new(BufReader::with_capacity(1 << 16, decoder))
    } else {
        Box::new(raw)
    })
}

/// Lines handed from the reader thread to the writer at a time.
const CHUNK_LINES: usize = 1024;

/// What the reader found on one line (or in one document: line 0 stands for the whole file).
type Parsed = (u64, Result<Vec<Record>, String>);

/// Reads and parses `path` on the calling (blocking) thread into `tx`; an I/O error ends the file, and so does a
/// line longer than `max_import_line_bytes` or more than `max_import_file_bytes` of decompressed input, each
/// named with the file and line.
fn read_file(path: &Path, read: Arc<AtomicU64>, tx: &mpsc::Sender<Vec<Parsed>>, limits: &Limits) -> Result<u64, Error> {
    let name = path.display().to_string();
    let max_line = limits.max_import_line_bytes;
    let max_file = limits.max_import_file_bytes;
    // one byte past the limit tells a file at the limit from one beyond it
    let mut input = open(path, read)?.take(max_file.saturating_add(1));
    let mut total = 0u64;
    let mut too_large = |n: usize, line: u64| -> Result<(), Error> {
        total += n as u64;
        if total > max_file {
            return Err(Error::TooLarge {
                field: format!("{name}:{line}"),
                reason: format!("the file decompresses to more than {max_file} bytes (max_import_file_bytes)"),
            });
        }
        Ok(())
    };
    let io = |e: std::io::Error| Error::io(format!("read {}", path.display()), e);
    if is_document(path) {
        let mut bytes = Vec::new();
        (&mut input).take(max_line as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
        too_large(bytes.len(), 0)?;
        if bytes.len() > max_line {
            return Err(Error::TooLarge {
                field: name,
                reason: format!("a JSON document is read whole: at most {max_line} bytes (max_import_line_bytes)"),
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| Error::Import { at: name.clone(), reason: e.to_string() })?;
        let lines = text.lines().count() as u64;
        let parsed = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) => kalshi::parse_document(&value).map_err(|e| e.to_string()),
            Err(e) => Err(format!("line {}: {e}", e.line())),
        };
        let _ = tx.blocking_send(vec![(0, parsed)]);
        return Ok(lines);
    }
    let mut chunk = Vec::with_capacity(CHUNK_LINES);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        // at most the limit, its newline and one byte more: never a whole overlong line in memory
        let read = (&mut input).take(max_line as u64 + 2).read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 {
            break;
        }
        number += 1;
        too_large(read, number)?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.len() > max_line {
            return Err(Error::TooLarge {
                field: format!("{name}:{number}"),
                reason: format!("the line is longer than {max_line} bytes (max_import_line_bytes)"),
            });
        }
        let parsed = match std::str::from_utf8(text) {
            Ok(text) => kalshi::parse_line(text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("not UTF-8: {e}")),
        };
        chunk.push((number, parsed));
        if chunk.len() == CHUNK_LINES && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
            // the writer stopped (an error): no need to read on
            return Ok(number);
        }
    }
    let _ = tx.blocking_send(chunk);
    Ok(number)
}

/// The batches of one write, one per table: a file's (here) or a REST page's ([`crate::collect`]).
#[derive(Debug, Default)]
pub struct TableBuffers {
    trades: RowBuffer<validate::TradeRow>,
    snapshots: RowBuffer<validate::SnapshotRow>,
    deltas: RowBuffer<validate::DeltaRow>,
    lifecycle: RowBuffer<validate::LifecycleRow>,
    series: RowBuffer<validate::SeriesRow>,
    events: RowBuffer<validate::EventRow>,
    markets: RowBuffer<validate::MarketRow>,
    settlements: RowBuffer<validate::SettlementRow>,
    kalshi_candles: RowBuffer<validate::KalshiCandleRow>,
}

/// Where a record's validation error points: the bare kind (the file and line come first).
fn at(kind: &'static str) -> At {
    At { kind, index: None }
}

impl TableBuffers {
    /// Validates `record` and adds it; for a kind the service does not store, its name.
    pub async fn push(
        &mut self,
        write: &mut PendingWrite,
        record: Record,
        b: &Bounds,
    ) -> Result<Option<String>, Error> {
        match record {
            Record::Trade(t) => self.trades.push(write, validate::trade(at("trade"), b, &t)?).await?,
            Record::Snapshot(s) => {
                self.snapshots.push(write, validate::snapshot(at("orderbook_snapshot"), b, &s)?).await?
            }
            Record::Delta(d) => self.deltas.push(write, validate::delta(at("orderbook_delta"), b, &d)?).await?,
            Record::Lifecycle(l) => {
                self.lifecycle.push(write, validate::lifecycle(at("market_lifecycle"), b, &l)?).await?
            }
            Record::Series(s) => self.series.push(write, validate::series(at("series"), b, &s)?).await?,
            Record::Event(e) => self.events.push(write, validate::event(at("event"), b, &e)?).await?,
            Record::Market(m) => self.markets.push(write, validate::market(at("market"), b, &m)?).await?,
            Record::Settlement(s) => {
                self.settlements.push(write, validate::settlement(at("settlement"), b, &s)?).await?
            }
            Record::KalshiCandle(c) => {
                self.kalshi_candles.push(write, validate::kalshi_candle(at("kalshi_candle"), b, &c)?).await?
            }
            Record::Ignored(kind) => return Ok(Some(kind)),
        }
        Ok(None)
    }

    /// Stages what every table holds still, for the write's commit.
    pub async fn finish(self, write: &mut PendingWrite) -> Result<(), Error> {
        self.trades.finish(write).await?;
        self.snapshots.finish(write).await?;
        self.deltas.finish(write).await?;
        self.lifecycle.finish(write).await?;
        self.series.finish(write).await?;
        self.events.finish(write).await?;
        self.markets.finish(write).await?;
        self.settlements.finish(write).await?;
        self.kalshi_candles.finish(write).await
    }
}

/// At most this many bad lines are logged one by one with --skip-bad; the rest are counted.
const BAD_LOGGED: u64 = 20;

/// Imports every file of `options.paths` into the database of `pool`.
pub async fn run(pool: &Pool, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let files = files(&options.paths)?;
    let total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let read = Arc::new(AtomicU64::new(0));
    let mut progress = Progress::new("import", options.progress, Unit::Bytes, total);
    let mut report = Report::default();
    for path in &files {
        import_file(pool, path, options, &read, &mut progress, &mut report).await?;
        report.files += 1;
    }
    report.bytes = read.load(Ordering::Relaxed);
    progress.finish(report.bytes, report.rows());
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One file, one write: commits when the whole file went in.
async fn import_file(
    pool: &Pool,
    path: &Path,
    options: &Options,
    read: &Arc<AtomicU64>,
    progress: &mut Progress,
    report: &mut Report,
) -> Result<(), Error> {
    let skip_bad = options.skip_bad;
    let (tx, mut rx) = mpsc::channel::<Vec<Parsed>>(4);
    let reader = {
        let (path, read, limits) = (path.to_owned(), read.clone(), options.limits.clone());
        tokio::task::spawn_blocking(move || read_file(&path, read, &tx, &limits))
    };
    let name = path.display().to_string();
    let bounds = Bounds::new(&options.limits, Utc::now());
    let mut write = PendingWrite::new(pool, options.limits.max_rows_per_write);
    let mut batches = TableBuffers::default();
    let mut records = 0u64;
    let place = |line: u64| if line == 0 { name.clone() } else { format!("{name}:{line}") };
    while let Some(chunk) = rx.recv().await {
        for (line, parsed) in chunk {
            // the file and line, made only for a bad one
            let bad = |reason: String, report: &mut Report| -> Result<(), Error> {
                let place = place(line);
                if !skip_bad {
                    return Err(Error::Import { at: place, reason });
                }
                report.bad += 1;
                if report.bad <= BAD_LOGGED {
                    tracing::warn!("skipped {place}: {reason}");
                } else if report.bad == BAD_LOGGED + 1 {
                    tracing::warn!("more bad lines are skipped without a message; the summary counts them");
                }
                Ok(())
            };
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(reason) => {
                    bad(reason, report)?;
                    continue;
                }
            };
            for record in parsed {
                match batches.push(&mut write, record, &bounds).await {
                    Ok(Some(kind)) => *report.ignored.entry(kind).or_default() += 1,
                    Ok(None) => records += 1,
                    Err(Error::InvalidArgument { field, reason }) => bad(format!("{field}: {reason}"), report)?,
                    // past max_rows_per_write: no bad item, the file is too large
                    Err(Error::TooLarge { reason, .. }) => return Err(Error::TooLarge { field: place(line), reason }),
                    Err(e) => return Err(e),
                }
            }
        }
        progress.update(read.load(Ordering::Relaxed), report.rows() + records as i64);
    }
    report.lines += reader.await.map_err(|e| Error::Import { at: name.clone(), reason: e.to_string() })??;
    batches.finish(&mut write).await?;
    for (table, stored) in write.commit().await?.stored {
        *report.stored.entry(table).or_default() += stored;
    }
    tracing::debug!("imported {name}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_told_by_the_name_without_its_compression() {
        for (name, document) in [
            ("a/trades.json", true),
            ("trades.JSON.gz", true),
            ("trades.json.zst", true),
            ("ws.jsonl", false),
            ("ws.jsonl.zstd", false),
            ("ws.log", false),
            ("json", false),
        ] {
            assert_eq!(is_document(Path::new(name)), document, "{name}");
        }
    }
}
