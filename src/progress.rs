//! The progress of a long command (`import`, `collect backfill`): a bar on a terminal, a log line every few
//! seconds otherwise, with the rows stored, their rate and an ETA by the unit of work done (bytes read, markets).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal (stderr), log lines otherwise.
    #[default]
    Auto,
    /// Always the bar.
    Bar,
    /// Log lines every few seconds.
    Log,
    /// Nothing until the summary.
    Off,
}

/// What the work is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Input bytes (shown as KiB, MiB, ...).
    Bytes,
    /// Things of this name, e.g. `markets`.
    Things(&'static str),
}

/// How often a log line reports progress when there is no bar.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The progress display of one command.
#[derive(Debug)]
pub struct Progress {
    /// The command, for the log lines.
    command: &'static str,
    unit: Unit,
    bar: Option<indicatif::ProgressBar>,
    log: bool,
    total: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    /// Progress of `command` over `total` units of work.
    pub fn new(command: &'static str, mode: ProgressMode, unit: Unit, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = matches!(mode, ProgressMode::Bar) || (mode == ProgressMode::Auto && terminal);
        let log = matches!(mode, ProgressMode::Log) || (mode == ProgressMode::Auto && !terminal);
        let bar = bar.then(|| {
            let done = match unit {
                Unit::Bytes => "{binary_bytes}/{binary_total_bytes}".to_owned(),
                Unit::Things(name) => format!("{{pos}}/{{len}} {name}"),
            };
            let template = format!("{{elapsed_precise}} [{{wide_bar}}] {done} {{msg}} ETA {{eta}}");
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
            bar
        });
        Self { command, unit, bar, log, total, started: Instant::now(), logged: Instant::now() }
    }

    /// `done` units of work, `rows` rows so far.
    pub fn update(&mut self, done: u64, rows: i64) {
        let rate = rows as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
        }
        if self.log && self.logged.elapsed() >= LOG_EVERY {
            self.logged = Instant::now();
            let share = done as f64 / self.total.max(1) as f64;
            let eta = self.started.elapsed().as_secs_f64() * (1.0 - share) / share.max(1e-9);
            let unit = match self.unit {
                Unit::Bytes => "bytes",
                Unit::Things(name) => name,
            };
            tracing::info!(
                "{}: {done} of {} {unit} ({:.0}%), {rows} rows, {rate:.0} rows/s, ETA {eta:.0} s",
                self.command,
                self.total,
                share * 100.0
            );
        }
    }

    /// The end: the bar cleared, the last state logged however short the work was.
    pub fn finish(&mut self, done: u64, rows: i64) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.log {
            self.logged = Instant::now() - LOG_EVERY;
            self.update(done, rows);
        }
    }
}
