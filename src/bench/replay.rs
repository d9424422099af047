//! `bench replay`: StreamTrades against `psql`'s binary COPY of the same rows, in one run.
//!
//! The server runs as a child process (`serve`) so that its peak RSS is its own. Each run measures, in turn:
//! B, psql `COPY (<the stream's SELECT>) TO STDOUT (FORMAT binary)` to /dev/null, under the stream's planner
//! settings; A, StreamTrades over the whole range and every market to a tonic client that decodes every trade,
//! in the rows, columns and Arrow layouts (Arrow decoded by arrow-ipc's stream decoder, as a client would); and
//! COPY, rows and Arrow again for the busiest market alone. The report gives medians of the runs and the ratios
//! A/B of trades per second.

use std::path::PathBuf;

use arrow_array::{Array, Int64Array};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use tonic::transport::Channel;

use super::harness::{Dataset, Drained, dataset, drain, median, psql_copy, with_database, with_server};
use crate::{
    config::BenchReplayArgs,
    error::Error,
    proto::{Layout, StreamTradesRequest, replay_service_client::ReplayServiceClient, stream_trades_response::Payload},
    replay::snapshot::PLAN_SETTINGS,
    replay::{sql, trades},
    store::db::Database,
    store::pg,
};

/// `bench replay`.
pub async fn run(args: BenchReplayArgs) -> Result<(), Error> {
    with_database(&args.db, async |db| measure(db, &args).await.map(|report| report.print(args.json))).await
}

/// What one run measured: trades and seconds of each case.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    copy: (u64, f64),
    rows: (u64, f64),
    columns: (u64, f64),
    arrow: (u64, f64),
    hot_copy: (u64, f64),
    hot_rows: (u64, f64),
    hot_arrow: (u64, f64),
}

async fn measure(db: &Database, args: &BenchReplayArgs) -> Result<Report, Error> {
    let Dataset { start, end, series, hot, url } = dataset(db, args).await?;
    let psql = pg::psql()?;
    let all_sql = trades::select_sql(start, end, None, None, None);
    let hot_sql = trades::select_sql(start, end, Some(std::slice::from_ref(&hot)), None, None);
    // the stream binds its market as a setting of its transaction; psql's session gets the same one
    let hot_settings = format!(
        "{PLAN_SETTINGS}; SELECT set_config('kalshi_replay.markets', {}, false)",
        sql::literal(&format!("{{\"{}\"}}", hot.replace('\\', "\\\\").replace('"', "\\\""))),
    );
    let (runs, peak_rss) = with_server(&url, async |channel| {
        let client = ReplayServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let request = |layout: Layout, series: Vec<String>, markets: Vec<String>| StreamTradesRequest {
            series_tickers: series,
            market_tickers: markets,
            start_time: Some(crate::time::to_proto(start)),
            end_time: Some(crate::time::to_proto(end)),
            batch_size: args.batch_size,
            layout: layout as i32,
            ..Default::default()
        };
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let measured = Run {
                copy: copy(&psql, &url, &all_sql, PLAN_SETTINGS).await?,
                rows: stream(client.clone(), request(Layout::Rows, series.clone(), Vec::new())).await?,
                columns: stream(client.clone(), request(Layout::Columns, series.clone(), Vec::new())).await?,
                arrow: stream(client.clone(), request(Layout::Arrow, series.clone(), Vec::new())).await?,
                hot_copy: copy(&psql, &url, &hot_sql, &hot_settings).await?,
                hot_rows: stream(client.clone(), request(Layout::Rows, Vec::new(), vec![hot.clone()])).await?,
                hot_arrow: stream(client.clone(), request(Layout::Arrow, Vec::new(), vec![hot.clone()])).await?,
            };
            tracing::info!(run, ?measured, "measured");
            let all = [measured.rows.0, measured.columns.0, measured.arrow.0];
            let hot = [measured.hot_rows.0, measured.hot_arrow.0];
            if all.iter().any(|&n| n != measured.copy.0) || hot.iter().any(|&n| n != measured.hot_copy.0) {
                return Err(Error::Bench(format!(
                    "the streams carried {all:?} trades, COPY {}; for the hot market {hot:?}, COPY {}",
                    measured.copy.0, measured.hot_copy.0
                )));
            }
            runs.push(measured);
        }
        Ok(runs)
    })
    .await?;
    Ok(Report { runs, peak_rss_kib: peak_rss, hot, batch_size: args.batch_size })
}

/// psql's binary COPY of `select` to /dev/null, under the stream's planner settings: (rows, seconds).
async fn copy(psql: &PathBuf, url: &str, select: &str, settings: &str) -> Result<(u64, f64), Error> {
    psql_copy(psql, url, select, settings, true).await
}

/// StreamTrades to the end, decoding and touching every trade: (trades, seconds). An Arrow stream goes through
/// arrow-ipc's decoder message by message, which checks every buffer and validates the arrays, as a client's
/// reader does.
async fn stream(mut client: ReplayServiceClient<Channel>, request: StreamTradesRequest) -> Result<(u64, f64), Error> {
    let mut decoder = StreamDecoder::new();
    drain("StreamTrades", client.stream_trades(request), move |message| match message.payload {
        Some(Payload::Trades(batch)) => {
            let sum = batch.trades.iter().fold(0i64, |s, t| s.wrapping_add(t.yes_price_micros ^ t.count_centi));
            Drained::Items(batch.trades.len() as u64, sum)
        }
        Some(Payload::Columns(columns)) => {
            let values = columns.yes_price_micros.iter().zip(&columns.count_centi);
            Drained::Items(columns.yes_price_micros.len() as u64, values.fold(0i64, |s, (p, c)| s.wrapping_add(p ^ c)))
        }
        Some(Payload::Arrow(arrow)) => arrow_items(&mut decoder, arrow.ipc),
        Some(Payload::Summary(s)) => Drained::Summary(s),
        None => Drained::Nothing,
    })
    .await
}

/// The trades of one Arrow data message: its IPC messages decoded (the schema and dictionaries kept for the
/// next), every yes_price_micros and count_centi touched. A message that does not decode to one batch of trades
/// counts nothing, so that the count check against the summary fails.
fn arrow_items(decoder: &mut StreamDecoder, ipc: Vec<u8>) -> Drained {
    let mut buffer = Buffer::from(ipc);
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer) {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "arrow message");
                return Drained::Nothing;
            }
        }
    }
    let (mut count, mut sum) = (0u64, 0i64);
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Int64Array>());
        let (Some(yes), Some(counts)) = (column("yes_price_micros"), column("count_centi")) else {
            return Drained::Nothing;
        };
        count += yes.len() as u64;
        sum = yes.values().iter().zip(counts.values()).fold(sum, |s, (p, c)| s.wrapping_add(p ^ c));
    }
    Drained::Items(count, sum)
}

#[derive(Debug)]
struct Report {
    runs: Vec<Run>,
    peak_rss_kib: Option<u64>,
    hot: String,
    batch_size: i32,
}

/// The median of trades per second of one case over the runs.
fn median_rate(runs: &[Run], case: impl Fn(&Run) -> (u64, f64)) -> f64 {
    median(runs.iter().map(case).map(|(n, s)| n as f64 / s.max(1e-9)).collect())
}

impl Report {
    fn rates(&self) -> [(&'static str, f64, u64); 7] {
        let r = &self.runs;
        let n = |case: fn(&Run) -> (u64, f64)| r.first().map(|run| case(run).0).unwrap_or(0);
        [
            ("B: psql COPY binary, all", median_rate(r, |x| x.copy), n(|x| x.copy)),
            ("A: StreamTrades rows, all", median_rate(r, |x| x.rows), n(|x| x.rows)),
            ("A: StreamTrades columns, all", median_rate(r, |x| x.columns), n(|x| x.columns)),
            ("A: StreamTrades arrow, all", median_rate(r, |x| x.arrow), n(|x| x.arrow)),
            ("B: psql COPY binary, hot market", median_rate(r, |x| x.hot_copy), n(|x| x.hot_copy)),
            ("A: StreamTrades rows, hot market", median_rate(r, |x| x.hot_rows), n(|x| x.hot_rows)),
            ("A: StreamTrades arrow, hot market", median_rate(r, |x| x.hot_arrow), n(|x| x.hot_arrow)),
        ]
    }

    fn print(&self, json: bool) {
        let rates = self.rates();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let (rows, columns, arrow) =
            (ratio(rates[1].1, rates[0].1), ratio(rates[2].1, rates[0].1), ratio(rates[3].1, rates[0].1));
        let (hot, hot_arrow) = (ratio(rates[5].1, rates[4].1), ratio(rates[6].1, rates[4].1));
        let rss_mb = self.peak_rss_kib.map(|k| k as f64 / 1024.0);
        if json {
            println!(
                "{{\"ratio_rows\": {rows:.3}, \"ratio_columns\": {columns:.3}, \"ratio_arrow\": {arrow:.3}, \
                 \"ratio_hot_rows\": {hot:.3}, \"ratio_hot_arrow\": {hot_arrow:.3}, \
                 \"trades\": {}, \"hot_market_trades\": {}, \"copy_trades_per_sec\": {:.0}, \
                 \"rows_trades_per_sec\": {:.0}, \"columns_trades_per_sec\": {:.0}, \"arrow_trades_per_sec\": {:.0}, \
                 \"hot_copy_trades_per_sec\": {:.0}, \"hot_rows_trades_per_sec\": {:.0}, \
                 \"hot_arrow_trades_per_sec\": {:.0}, \"server_peak_rss_mb\": {}, \"runs\": {}, \"batch_size\": {}}}",
                rates[0].2,
                rates[4].2,
                rates[0].1,
                rates[1].1,
                rates[2].1,
                rates[3].1,
                rates[4].1,
                rates[5].1,
                rates[6].1,
                rss_mb.map_or("null".to_owned(), |m| format!("{m:.1}")),
                self.runs.len(),
                self.batch_size,
            );
            return;
        }
        println!("StreamTrades vs psql COPY (binary) on the same rows; medians of {} runs", self.runs.len());
        println!("{:<36} {:>10} {:>14}", "case", "trades", "trades/s");
        for (name, rate, trades) in rates {
            println!("{name:<36} {trades:>10} {rate:>14.0}");
        }
        println!("ratio rows A/B:       {rows:.2} x   (goal 1.0 x or better)");
        println!("ratio columns A/B:    {columns:.2} x   (goal 1.3 x or better)");
        println!("ratio arrow A/B:      {arrow:.2} x   (goal 1.3 x or better)");
        println!("ratio hot market A/B: rows {hot:.2} x, arrow {hot_arrow:.2} x   ({})", self.hot);
        match rss_mb {
            Some(mb) => println!("server peak RSS:      {mb:.1} MB (goal under 100 MB)"),
            None => println!("server peak RSS:      unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_rates() {
        let run = |secs: f64| Run { copy: (100, secs), ..Run::default() };
        assert_eq!(median_rate(&[run(1.0), run(4.0), run(2.0)], |r| r.copy), 50.0);
        assert_eq!(median_rate(&[run(1.0), run(2.0)], |r| r.copy), 75.0);
        assert_eq!(median_rate(&[], |r| r.copy), 0.0);
    }
}
