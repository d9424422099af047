//! Schema migrations: the SQL files of migrations/ (NNNN_name.sql) are embedded at build time and applied in
//! version order, each in its own transaction, and recorded in `schema_migrations` with a checksum.
//!
//! Applying is idempotent (applied versions are skipped), safe when several processes start at once (a session
//! advisory lock serializes them), and refuses a database whose applied migrations were edited afterwards or that
//! a newer binary migrated. It is small enough that a migrations crate would add more than it saves: the crates
//! we looked at want another file naming scheme or bring a second PostgreSQL driver.

use tokio_postgres::Client;

use crate::error::Error;

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The NNNN of the file name.
    pub version: i32,
    /// The name part of the file name.
    pub name: &'static str,
    /// The file's SQL.
    pub sql: &'static str,
}

/// Every migration of migrations/, sorted by version.
pub const MIGRATIONS: &[Migration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Key of the advisory lock that serializes migrators.
const LOCK_KEY: i64 = 0x6b72_6d69_6772; // "krmigr"

const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)";

/// The checksum is computed by the server, so the Rust side needs no hashing dependency for it.
const SELECT_APPLIED: &str = "SELECT version, name,
    checksum = encode(sha256(convert_to($1::text, 'UTF8')), 'hex') AS same
  FROM schema_migrations WHERE version = $2";

const SELECT_UNKNOWN: &str = "SELECT version, name FROM schema_migrations WHERE NOT (version = ANY($1)) ORDER BY 1";

const INSERT_APPLIED: &str = "INSERT INTO schema_migrations (version, name, checksum)
    VALUES ($1, $2, encode(sha256(convert_to($3::text, 'UTF8')), 'hex'))";

/// Applies the pending migrations and returns the versions it applied (empty when the schema was current).
pub async fn run(client: &mut Client) -> Result<Vec<i32>, Error> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let result = apply_pending(client).await;
    // release even after a failure; a broken connection releases it by itself
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>, Error> {
    client.batch_execute(CREATE_HISTORY).await?;
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    if let Some(row) = client.query(SELECT_UNKNOWN, &[&known]).await?.first() {
        return Err(Error::Migration {
            version: row.get(0),
            name: row.get(1),
            reason: "applied to this database but unknown to this binary (was it migrated by a newer version?)"
                .to_owned(),
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if let Some(row) = client.query_opt(SELECT_APPLIED, &[&m.sql, &m.version]).await? {
            if !row.get::<_, bool>("same") {
                return Err(Error::Migration {
                    version: m.version,
                    name: m.name.to_owned(),
                    reason: "the file changed after it was applied; add a new migration instead".to_owned(),
                });
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await.map_err(|e| Error::Migration {
            version: m.version,
            name: m.name.to_owned(),
            reason: e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
        })?;
        tx.execute(INSERT_APPLIED, &[&m.version, &m.name, &m.sql]).await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(applied)
}
