//! placeholder until the private-postgres module lands
use std::path::Path;
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("no binaries")]
    NoBinaries,
}
#[derive(Debug)]
pub struct PrivatePostgres;
impl PrivatePostgres {
    pub async fn start(_dir: &Path) -> Result<Self, PgError> {
        Err(PgError::NoBinaries)
    }
    pub fn config(&self, _db: &str) -> tokio_postgres::Config {
        tokio_postgres::Config::new()
    }
    pub async fn stop(self) -> Result<(), PgError> {
        Ok(())
    }
}
impl PrivatePostgres {
    pub async fn shared_throwaway() -> Result<&'static PrivatePostgres, PgError> {
        Err(PgError::NoBinaries)
    }
}
