//! placeholder until the generator lands
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub seed: u64,
    pub markets: u32,
    pub days: u32,
    pub trades: u64,
    pub start: chrono::NaiveDate,
}
#[derive(Debug, Clone, Default)]
pub struct GenerateReport {
    pub series: u64,
    pub events: u64,
    pub markets: u64,
    pub settlements: u64,
    pub trades: u64,
    pub snapshots: u64,
    pub deltas: u64,
    pub lifecycle: u64,
    pub elapsed: std::time::Duration,
}
impl GenerateReport {
    pub fn total_rows(&self) -> u64 {
        0
    }
    pub fn rows_per_sec(&self) -> f64 {
        0.0
    }
}
pub async fn generate(
    _client: &mut tokio_postgres::Client,
    _spec: &DatasetSpec,
) -> Result<GenerateReport, tokio_postgres::Error> {
    Ok(GenerateReport::default())
}
