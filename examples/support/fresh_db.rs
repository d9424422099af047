//! A fresh database per measured run, for the benchmark examples: created on the server of `DATABASE_URL`,
//! migrated, dropped afterwards.

use std::time::Duration;

use kalshi_replay::store::{db, migrate};

pub(crate) type Error = Box<dyn std::error::Error>;

/// Runs `work` on a new, migrated database `name` of the server at `url`, dropped afterwards.
pub(crate) async fn fresh<T>(
    url: &str,
    name: &str,
    work: impl AsyncFnOnce(&db::Database) -> Result<T, Error>,
) -> Result<T, Error> {
    let (admin, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    let options = db::Options {
        database_url: Some(db_url(url, name)),
        data_dir: std::env::temp_dir(),
        connect_timeout: Duration::from_secs(10),
    };
    let result = async {
        let database = db::Database::open(&options).await?;
        migrate::run(&mut database.connect(Duration::from_secs(10)).await?).await?;
        let result = work(&database).await;
        database.shutdown().await?;
        result
    }
    .await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    result
}

/// `url` with its database name replaced by `name`.
fn db_url(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && server.len() > server.find("://").unwrap_or(0) + 3 => server,
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
