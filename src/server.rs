//! The gRPC server: the three services, health per service, reflection (v1 and v1alpha), and the background tasks
//! that live as long as it does (health watcher, partition maintenance, the reference cache's listener). `run`
//! takes a bound listener, the pools and a shutdown future, so tests bind port 0 and own the shutdown.
//!
//! Two pools: streams and writes take their connections from `data`, under the admission caps; lookups and
//! health from `lookups`, so that they never wait behind streams, however many clients stall.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::Server, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    admission::Admission,
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
    store::db::{Database, Pool},
    store::partitions,
    token::TokenKey,
};

/// The server's connection pools.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Streams, writes and partition maintenance, under the admission caps.
    pub data: Pool,
    /// Lookups (ReferenceService) and health.
    pub lookups: Pool,
}

impl Pools {
    /// A pool of `data` connections and one of `lookups` connections to `db`.
    pub async fn open(db: &Database, data: u32, lookups: u32, timeout: Duration) -> Result<Self, Error> {
        Ok(Self { data: db.pool(data, timeout).await?, lookups: db.pool(lookups, timeout).await? })
    }
}

/// Server settings that are not the listener or the pools.
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

/// After the drain at shutdown, how long the server still waits for ended streams to reach their clients.
const FLUSH_AFTER_DRAIN: Duration = Duration::from_secs(1);

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
    pools: Pools,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let limits = options.limits.clone();
    let admission = Admission::new(&limits);
    let (pool_size, needed) = (pools.data.config().max_size as usize, Admission::pool_needed(&limits));
    if pool_size < needed {
        tracing::warn!(
            pool_size,
            needed,
            "--pool-size is below 2 x --max-streams + --max-writes: admitted streams and writes may wait for \
             connections"
        );
    }
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
    let tokens = TokenKey::load(&*pools.lookups.get().await?).await?;
    let cache = ReferenceCache::default();
    let background = [
        tokio::spawn(watch_database(pools.lookups.clone(), reporter, options.health_interval)),
        tokio::spawn(partitions::maintain(pools.data.clone(), options.partitions_ahead)),
        tokio::spawn(cache.clone().listen(pools.lookups.clone())),
    ];
    let local = listener.local_addr().map_err(|e| Error::io("read listener address", e))?;
    tracing::info!(%local, "serving grpc");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (decode, encode) = (limits.max_decoding_message_bytes, limits.max_encoding_message_bytes);
    let reference = ReferenceServiceServer::new(ReferenceApi::new(pools.lookups.clone(), cache, tokens.clone()))
        .max_decoding_message_size(decode)
        .max_encoding_message_size(encode);
    let replay =
        ReplayServiceServer::new(ReplayApi::new(pools.data.clone(), admission.clone(), limits.clone(), tokens))
            .max_decoding_message_size(decode)
            .max_encoding_message_size(encode);
    let ingest = IngestServiceServer::new(IngestApi::new(pools.data.clone(), admission.clone(), limits.clone()))
        .max_decoding_message_size(decode)
        .max_encoding_message_size(encode);
    // at the shutdown signal: stop accepting, refuse new streams, and end those in flight after the drain's
    // grace (tonic waits for in-flight calls before `serve` returns)
    let draining = async {
        shutdown.await;
        tracing::info!(grace = ?limits.shutdown_drain, "draining streams");
        admission.begin_drain(limits.shutdown_drain);
    };
    let serving = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(reference)
        .add_service(replay)
        .add_service(ingest)
        .serve_with_incoming_shutdown(incoming, draining);
    // A stream ended by the drain may still wait for its client to read what the transport holds, and tonic's
    // graceful stop waits for it: once the drain's grace (and a moment to flush) has passed, stop regardless.
    // The connections' tasks then end with the process; a client that reads again gets UNAVAILABLE.
    let served = tokio::select! {
        served = serving => served,
        () = async {
            admission.drained().await;
            tokio::time::sleep(FLUSH_AFTER_DRAIN).await;
        } => {
            tracing::warn!("clients still held streams after the drain; stopping without them");
            Ok(())
        }
    };
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

/// A server of grpc.health.v1 alone (with reflection, for grpcurl) on `addr`, for a process that serves nothing
/// else (`collect live`), until `shutdown`: its reporter, and the task serving it.
pub async fn health_only(
    addr: std::net::SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(HealthReporter, tokio::task::JoinHandle<Result<(), Error>>), Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    let local = listener.local_addr().map_err(|e| Error::io("read listener address", e))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    // not serving until the process says so
    reporter.set_service_status("", ServingStatus::NotServing).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Serve(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Serve(e.to_string()))?;
    tracing::info!(%local, "serving grpc health");
    let serving = Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown);
    let served = tokio::spawn(async move { serving.await.map_err(|e| Error::Serve(e.to_string())) });
    Ok((reporter, served))
}
