//! Daily partitions of the fact tables: created on demand for the range a write or a load touches, and ahead of
//! time by the server, so that a write at midnight never waits on DDL.

use std::time::Duration;

use chrono::{DateTime, Days, Utc};
use tokio_postgres::GenericClient;

use crate::{
    error::Error,
    store::db::{Pool, Prepare},
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

/// How often the server re-checks the partitions ahead, and how soon it retries after a failure.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);
const RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// How long maintenance waits for the fact tables' lock. Creating a partition locks its parent exclusively: a
/// creator that waited behind a long replay (whose snapshot holds a shared lock on the parent until it ends)
/// would queue every later query of the table behind itself. It gives up instead and tries again later.
const LOCK_TIMEOUT: &str = "1s";

/// Keeps `days_ahead` days of partitions created, hourly, until the task is dropped. Failures (such as a lock
/// not granted within [`LOCK_TIMEOUT`]) are logged and retried a minute later.
pub async fn maintain(pool: Pool, days_ahead: u32) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let result = async {
            let conn = pool.get().await?;
            let client = conn.client();
            // a section (see `store::db`): a transaction left open by an error or a drop is never reused
            conn.section(async {
                client.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")).await?;
                let created = ensure_ahead(client, Utc::now(), days_ahead).await;
                let end = if created.is_ok() { "COMMIT" } else { "ROLLBACK" };
                client.batch_execute(end).await?;
                Ok::<_, Error>(created)
            })
            .await?
        }
        .await;
        wait = match result {
            Ok(0) => MAINTENANCE_INTERVAL,
            Ok(created) => {
                tracing::info!(created, days_ahead, "created partitions ahead");
                MAINTENANCE_INTERVAL
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY_INTERVAL, "partition maintenance failed");
                RETRY_INTERVAL
            }
        };
    }
}
