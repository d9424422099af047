//! Logging: tracing to stderr, filtered by --log / KALSHI_REPLAY_LOG (EnvFilter syntax).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. An invalid filter falls back to `info` with a warning rather than failing
/// start-up over a typo in a log setting.
pub fn init(filter: &str) {
    let (filter, invalid) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    // colours only for a person at a terminal, never into a pipe or a log file
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if let Some(e) = invalid {
        tracing::warn!(error = %e, "invalid log filter, using info");
    }
}
