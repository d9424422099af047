//! What a recording did (the summary) and how it is doing (grpc.health.v1).

use std::collections::BTreeMap;
use std::time::Duration;

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::ingest::write::{self, Stored};

/// What a recording did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Data messages of the selected markets received (trades, snapshots, deltas, lifecycle events).
    pub messages: u64,
    /// Messages of other markets (all-market channels), not stored.
    pub other_markets: u64,
    /// Rows per table: inserted, updated, already stored.
    pub stored: BTreeMap<&'static str, Stored>,
    /// Commits.
    pub writes: u64,
    /// Commits that failed and were tried again.
    pub write_retries: u64,
    /// Messages the write core refused (logged and dropped).
    pub refused: u64,
    /// Connections opened, and those lost (closed, failed, silent).
    pub connections: u64,
    pub disconnects: u64,
    /// Breaks in an order-book subscription's seq, each answered by a new subscription.
    pub gaps: u64,
    /// Markets fetched from the REST API because a message named a market the database did not know.
    pub fetched_markets: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// One line per table and the totals, for the command line.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "recorded {} messages in {:.1} s ({} of other markets skipped): {} writes ({} retried), {} refused, \
             {} connections ({} lost), {} seq gaps resubscribed, {} markets fetched\n",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.other_markets,
            self.writes,
            self.write_retries,
            self.refused,
            self.connections,
            self.disconnects,
            self.gaps,
            self.fetched_markets,
        );
        out.push_str(&write::table_lines(&self.stored));
        out
    }
}

/// The recorder's health: connected and subscribed, and writing.
#[derive(Debug)]
pub(super) struct Health {
    reporter: Option<HealthReporter>,
    /// (connected, writing)
    state: std::sync::Mutex<(bool, bool)>,
}

impl Health {
    pub(super) async fn new(reporter: Option<HealthReporter>) -> Self {
        let health = Self { reporter, state: std::sync::Mutex::new((false, true)) };
        health.report().await;
        health
    }

    pub(super) async fn connected(&self, connected: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = connected;
        self.report().await;
    }

    pub(super) async fn writing(&self, writing: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = writing;
        self.report().await;
    }

    async fn report(&self) {
        let Some(reporter) = &self.reporter else { return };
        let (connected, writing) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        let status = if connected && writing { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
    }
}
