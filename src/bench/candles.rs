//! `bench candles`: StreamCandles against `psql` running the same aggregation in SQL, in one run.
//!
//! On the dataset of `bench replay` (generated on the first run), each run measures, for 1 minute, 1 hour and 1
//! day: B, psql `COPY (<date_bin GROUP BY with first and last trade by the total order>) TO STDOUT` to
//! /dev/null; A, StreamCandles of every market over the whole range to a tonic client that decodes every
//! candle. The candle counts must agree. The report gives medians of the runs and the ratios B/A of the times.

use tonic::transport::Channel;

use super::harness::{Dataset, Drained, dataset, drain, median, psql_copy, with_database, with_server};
use crate::{
    config::BenchReplayArgs,
    error::Error,
    proto::{StreamCandlesRequest, replay_service_client::ReplayServiceClient, stream_candles_response::Payload},
    replay::{request, sql},
    store::db::Database,
    store::pg,
};

/// The intervals measured, in seconds, with their names.
const INTERVALS: [(i32, &str); 3] = [(60, "1m"), (3600, "1h"), (86_400, "1d")];

/// `bench candles`.
pub async fn run(args: BenchReplayArgs) -> Result<(), Error> {
    with_database(&args.db, async |db| measure(db, &args).await.map(|report| report.print(args.json))).await
}

/// The SQL a PostgreSQL user would write for the same candles (fill NONE): one row per market and period with
/// open and close by the total order, high, low, volume, count and VWAP, ordered as the stream.
fn candles_sql(dataset: &Dataset, interval: i32) -> String {
    format!(
        "SELECT date_bin('{interval} seconds', ts, '2000-01-01T00:00:00Z') AS period, ticker, \
                (array_agg(yes_price_micros ORDER BY ts, trade_id))[1] AS open, \
                max(yes_price_micros) AS high, min(yes_price_micros) AS low, \
                (array_agg(yes_price_micros ORDER BY ts DESC, trade_id DESC))[1] AS close, \
                sum(count_centi) AS volume, count(*) AS trades, \
                round(sum(yes_price_micros::numeric * count_centi) / sum(count_centi)) AS vwap \
           FROM trades WHERE ts >= {} AND ts < {} \
          GROUP BY 1, 2 ORDER BY 1, 2",
        sql::timestamp_literal(dataset.start),
        sql::timestamp_literal(dataset.end),
    )
}

/// One run: per interval, (candles, seconds) of the SQL and of the stream.
type Run = [((u64, f64), (u64, f64)); 3];

async fn measure(db: &Database, args: &BenchReplayArgs) -> Result<Report, Error> {
    let dataset = dataset(db, args).await?;
    let psql = pg::psql()?;
    let (runs, peak_rss) = with_server(&dataset.url, async |channel| {
        let client = ReplayServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let mut runs: Vec<Run> = Vec::new();
        for run in 1..=args.runs {
            let mut measured = [((0, 0.0), (0, 0.0)); 3];
            for (i, (interval, name)) in INTERVALS.into_iter().enumerate() {
                // the candles are counted on the first run only: counting runs the aggregation again
                let sql = psql_copy(&psql, &dataset.url, &candles_sql(&dataset, interval), "", run == 1).await?;
                let request = StreamCandlesRequest {
                    series_tickers: dataset.series.clone(),
                    start_time: Some(crate::time::to_proto(dataset.start)),
                    end_time: Some(crate::time::to_proto(dataset.end)),
                    interval_seconds: interval,
                    batch_size: args.batch_size.min(request::MAX_BATCH),
                    ..Default::default()
                };
                let stream = stream(client.clone(), request).await?;
                if run == 1 && sql.0 != stream.0 {
                    return Err(Error::Bench(format!(
                        "{name}: the SQL gave {} candles, the stream {}",
                        sql.0, stream.0
                    )));
                }
                tracing::info!(run, interval = name, sql_seconds = sql.1, stream_seconds = stream.1, "measured");
                measured[i] = (sql, stream);
            }
            runs.push(measured);
        }
        Ok(runs)
    })
    .await?;
    Ok(Report { runs, peak_rss_kib: peak_rss })
}

/// StreamCandles to the end, decoding and touching every candle: (candles, seconds).
async fn stream(mut client: ReplayServiceClient<Channel>, request: StreamCandlesRequest) -> Result<(u64, f64), Error> {
    drain("StreamCandles", client.stream_candles(request), |message| match message.payload {
        Some(Payload::Candles(batch)) => {
            let sum = batch.candles.iter().fold(0i64, |s, c| s.wrapping_add(c.close_micros ^ c.volume_centi));
            Drained::Items(batch.candles.len() as u64, sum)
        }
        Some(Payload::Summary(s)) => Drained::Summary(s),
        Some(Payload::Arrow(_)) | None => Drained::Nothing,
    })
    .await
}

#[derive(Debug)]
struct Report {
    runs: Vec<Run>,
    peak_rss_kib: Option<u64>,
}

impl Report {
    /// Per interval: candles, median seconds of the SQL and of the stream, and their ratio.
    fn rows(&self) -> [(&'static str, u64, f64, f64, f64); 3] {
        std::array::from_fn(|i| {
            let name = INTERVALS[i].1;
            let sql = median(self.runs.iter().map(|r| r[i].0.1).collect());
            let stream = median(self.runs.iter().map(|r| r[i].1.1).collect());
            let candles = self.runs.first().map_or(0, |r| r[i].1.0);
            (name, candles, sql, stream, if stream > 0.0 { sql / stream } else { 0.0 })
        })
    }

    fn print(&self, json: bool) {
        let rows = self.rows();
        let rss_mb = self.peak_rss_kib.map(|k| k as f64 / 1024.0);
        if json {
            let mut fields = Vec::new();
            for (name, candles, sql, stream, ratio) in rows {
                fields.push(format!(
                    "\"ratio_{name}\": {ratio:.3}, \"candles_{name}\": {candles}, \"sql_seconds_{name}\": {sql:.3}, \
                     \"stream_seconds_{name}\": {stream:.3}"
                ));
            }
            println!(
                "{{{}, \"server_peak_rss_mb\": {}, \"runs\": {}}}",
                fields.join(", "),
                rss_mb.map_or("null".to_owned(), |m| format!("{m:.1}")),
                self.runs.len()
            );
            return;
        }
        println!("StreamCandles vs psql running the same aggregation; medians of {} runs", self.runs.len());
        println!("{:<9} {:>10} {:>10} {:>10} {:>8}  goal", "interval", "candles", "SQL s", "stream s", "ratio");
        for (name, candles, sql, stream, ratio) in rows {
            let goal = match name {
                "1m" => "2 x",
                "1d" => "10 x",
                _ => "-",
            };
            println!("{name:<9} {candles:>10} {sql:>10.2} {stream:>10.2} {ratio:>7.2}x  {goal}");
        }
        match rss_mb {
            Some(mb) => println!("server peak RSS: {mb:.1} MB"),
            None => println!("server peak RSS: unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios_per_interval() {
        let run = |sql: f64, stream: f64| [((10, sql), (10, stream)); 3];
        let report = Report { runs: vec![run(4.0, 1.0), run(6.0, 3.0), run(5.0, 2.0)], peak_rss_kib: None };
        let rows = report.rows();
        assert_eq!(rows.map(|r| r.0), ["1m", "1h", "1d"]);
        assert_eq!((rows[0].2, rows[0].3, rows[0].4), (5.0, 2.0, 2.5));
        assert_eq!(median(vec![1.0, 3.0]), 2.0);
    }
}
