//! A backfill's progress: a bar on a terminal (markets done, trades/s, ETA), a log line every few seconds
//! otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a log line reports progress when there is no bar.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    started: Instant,
    /// Markets done, and when the last log line went out.
    state: Mutex<(u64, Instant)>,
}

impl Progress {
    /// Progress over `total` markets.
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} markets, {msg} [{elapsed_precise}, ETA {eta}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Self { bar, total, started: Instant::now(), state: Mutex::new((0, Instant::now())) }
    }

    /// One more market done; `trades` read so far.
    pub fn market_done(&self, trades: i64) {
        let rate = trades as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{trades} trades, {rate:.0} trades/s"));
            bar.inc(1);
        } else if state.1.elapsed() >= LOG_EVERY || state.0 == self.total {
            state.1 = Instant::now();
            tracing::info!(markets = state.0, of = self.total, trades, trades_per_sec = rate as u64, "backfill");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
