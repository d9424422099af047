//! The gRPC server: the three services, health per service, reflection (v1 and v1alpha), and the background tasks
//! that live as long as it does (health watcher, partition maintenance, the reference cache's listener). `run` takes a bound listener and a shutdown future, so tests bind port 0 and own
//! the shutdown.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::Server, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    error::Error,
    ingest::IngestApi,
    limits::Limits,
    proto::{
        FILE_DESCRIPTOR_SET, ingest_service_server::IngestServiceServer,
        reference_service_server::ReferenceServiceServer, replay_service_server::ReplayServiceServer,
    },
    reference::ReferenceApi,
    reference::cache::ReferenceCache,
    replay::ReplayApi,
    store::db::Pool,
    store::partitions,
    token::TokenKey,
};

/// Server settings that are not the listener or the pool.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// UTC days ahead of today to keep partitions created.
    pub partitions_ahead: u32,
    /// How often health re-checks the database.
    pub health_interval: Duration,
    /// The limits the services enforce.
    pub limits: Limits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { partitions_ahead: 7, health_interval: Duration::from_secs(5), limits: Limits::default() }
    }
}

/// How long one health check of the database may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The names health reports on: the empty name (the server as a whole) and each service.
const SERVICE_NAMES: [&str; 4] = [
    "",
    <ReferenceServiceServer<ReferenceApi> as NamedService>::NAME,
    <ReplayServiceServer<ReplayApi> as NamedService>::NAME,
    <IngestServiceServer<IngestApi> as NamedService>::NAME,
];

/// Serves until `shutdown` completes, then stops accepting, lets in-flight calls finish and returns.
pub async fn run(
    listener: TcpListener,
    pool: Pool,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Serve(e.to_string()))?;
    // grpcurl before 1.9 speaks only v1alpha
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Serve(e.to_string()))?;

    // the pool was just proven reachable; the watcher takes over from here
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, ServingStatus::Serving).await;
    }
    // signs page and resume tokens alike on every server of this database, across restarts
    let tokens = TokenKey::load(&*pool.get().await?).await?;
    let cache = ReferenceCache::default();
    let background = [
        tokio::spawn(watch_database(pool.clone(), reporter, options.health_interval)),
        tokio::spawn(partitions::maintain(pool.clone(), options.partitions_ahead)),
        tokio::spawn(cache.clone().listen(pool.clone())),
    ];
    let local = listener.local_addr().map_err(|e| Error::io("read listener address", e))?;
    tracing::info!(%local, "serving grpc");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ReferenceServiceServer::new(ReferenceApi::new(
            pool.clone(),
            cache,
            options.limits.clone(),
            tokens.clone(),
        )))
        .add_service(ReplayServiceServer::new(ReplayApi::new(pool.clone(), options.limits.clone(), tokens)))
        .add_service(IngestServiceServer::new(IngestApi::new(pool, options.limits.clone())))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    for task in background {
        task.abort();
    }
    tracing::info!("server stopped");
    served.map_err(|e| Error::Serve(e.to_string()))
}

/// Reports SERVING while the database answers and NOT_SERVING while it does not, for the server and each service
/// (they all need it).
async fn watch_database(pool: Pool, reporter: HealthReporter, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    let mut last = Some(ServingStatus::Serving);
    loop {
        tick.tick().await;
        let check = async {
            let conn = pool.get().await.map_err(Error::from)?;
            conn.simple_query("SELECT 1").await.map_err(Error::from)
        };
        let status = match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
            Ok(Ok(_)) => ServingStatus::Serving,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check failed");
                ServingStatus::NotServing
            }
            Err(_) => {
                tracing::warn!("health check timed out");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            for name in SERVICE_NAMES {
                reporter.set_service_status(name, status).await;
            }
            last = Some(status);
        }
    }
}
