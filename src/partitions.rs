//! Daily partitions of the fact tables: created on demand for the range a write or a load touches, and ahead of
//! time by the server, so that a write at midnight never waits on DDL.

use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use tokio_postgres::GenericClient;

use crate::{
    db::{Pool, Prepare},
    error::Error,
    time,
};

/// Creates the daily partitions of every fact table for the UTC days that intersect [from, to), and returns how
/// many it created. Idempotent and safe to call concurrently (see migrations/0001_schema.sql).
pub async fn ensure_range(client: &impl GenericClient, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<i32, Error> {
    let row = client.query_one("SELECT ensure_daily_partitions($1, $2)", &[&from, &to]).await?;
    Ok(row.get(0))
}

/// Creates the partitions of today and the next `days_ahead` UTC days.
pub async fn ensure_ahead(client: &impl GenericClient, now: DateTime<Utc>, days_ahead: u32) -> Result<i32, Error> {
    let today = time::day_start(now);
    let end = today.checked_add_days(Days::new(u64::from(days_ahead) + 1)).unwrap_or(today);
    ensure_range(client, today, end).await
}

/// How often the server re-checks the partitions ahead.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Keeps `days_ahead` days of partitions created, hourly, until the task is dropped. Failures are logged and
/// retried at the next tick: a missing partition ahead is created on demand by ingest anyway.
pub async fn maintain(pool: Pool, days_ahead: u32) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tick.tick().await;
        let result = async {
            let conn = pool.get().await?;
            ensure_ahead(conn.client(), Utc::now(), days_ahead).await
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(created) => tracing::info!(created, days_ahead, "created partitions ahead"),
            Err(e) => tracing::warn!(error = %e, "partition maintenance failed"),
        }
    }
}
