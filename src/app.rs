//! The subcommands: what `serve`, `migrate`, `generate`, `import` and `demo` do, over the library's pieces. Each opens the
//! database (starting the private cluster when DATABASE_URL is unset) and always stops what it started, also after
//! an error or Ctrl-C.

use std::{future::Future, net::SocketAddr};

use chrono::{Days, Utc};
use tokio::net::TcpListener;
use tokio_postgres::Client;

use crate::{
    collect,
    config::{
        BackfillArgs, CollectArgs, CollectMode, DatasetArgs, DbArgs, DemoArgs, GenerateArgs, ImportArgs, LiveArgs,
        LiveChannel, ServeArgs,
    },
    error::Error,
    generate, import,
    server::{self, Pools, ServerOptions},
    store::db::Database,
    store::migrate,
    store::partitions,
};

/// `serve`: migrate, then serve until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<(), Error> {
    on_migrated_database(&args.db, async |db, client| serve_on(db, client, &args, |_| {}).await).await
}

/// `migrate`: apply pending migrations.
pub async fn migrate(args: DbArgs) -> Result<(), Error> {
    with_database(&args, async |db| {
        let mut client = db.connect(args.connect_timeout).await?;
        let applied = migrate::run(&mut client).await?;
        match applied.as_slice() {
            [] => println!("schema is current"),
            versions => println!("applied migrations {versions:?}"),
        }
        Ok(())
    })
    .await
}

/// `generate`: load a synthetic dataset into an empty database.
pub async fn generate(args: GenerateArgs) -> Result<(), Error> {
    on_migrated_database(&args.db, async |_, mut client| {
        let markets = count_markets(&client).await?;
        if markets > 0 {
            return Err(Error::invalid(
                "--database-url",
                format!("the database already holds {markets} markets; generate loads into an empty database"),
            ));
        }
        load(&mut client, &args.dataset).await
    })
    .await
}

/// `import`: migrate, then import the files, one write per file, and print what was stored.
pub async fn import(args: ImportArgs) -> Result<(), Error> {
    on_migrated_database(&args.db, async |db, client| {
        drop(client);
        // one connection for the write, one for the partitions it creates
        let pool = db.pool(2, args.db.connect_timeout).await?;
        let options = import::Options {
            paths: args.paths.clone(),
            skip_bad: args.skip_bad,
            progress: args.progress,
            limits: args.limits(),
        };
        let report = import::run(&pool, &options).await?;
        print!("{}", report.summary());
        Ok(())
    })
    .await
}

/// `collect`: fetches Kalshi's data into the database.
pub async fn collect(args: CollectArgs) -> Result<(), Error> {
    match args.mode {
        CollectMode::Backfill(args) => backfill(args).await,
        CollectMode::Live(args) => live(args).await,
    }
}

/// `collect backfill`.
async fn backfill(args: BackfillArgs) -> Result<(), Error> {
    if args.series.is_empty() && args.categories.is_empty() && args.events.is_empty() && args.markets.is_empty() {
        return Err(Error::invalid("selection", "name at least one --series, --category, --event or --market"));
    }
    on_migrated_database(&args.db, async |db, client| {
        drop(client);
        // a connection per market fetched at once, one for the partitions its writes create
        let pool = db.pool(u32::from(args.concurrency) + 1, args.db.connect_timeout).await?;
        let rest = collect::rest::KalshiRest::new(&args.rest.base_url, args.rest.policy())?;
        let options = collect::backfill::Options {
            series: args.series.clone(),
            categories: args.categories.clone(),
            events: args.events.clone(),
            markets: args.markets.clone(),
            statuses: args.statuses.clone(),
            start: args.start,
            end: args.end,
            concurrency: usize::from(args.concurrency),
            limits: crate::limits::Limits::default(),
            progress: args.progress,
            rows_per_write: collect::backfill::ROWS_PER_WRITE,
            candles: {
                let mut periods: Vec<i32> = args.candles.iter().flatten().copied().collect();
                periods.sort_unstable();
                periods.dedup();
                periods
            },
        };
        let report = collect::backfill::run(&pool, &rest, &options).await?;
        print!("{}", report.summary());
        Ok(())
    })
    .await
}

/// `collect live`: records until SIGINT or SIGTERM, then commits what it received and prints the summary.
async fn live(args: LiveArgs) -> Result<(), Error> {
    let key = match (&args.api_key_id, &args.private_key_file) {
        (Some(id), Some(path)) => Some(collect::auth::ApiKey::from_file(id, path)?),
        (None, None) => None,
        _ => {
            return Err(Error::invalid("api_key_id", "give both --api-key-id and --private-key-file, or neither"));
        }
    };
    let shutdown = shutdown_signal()?;
    on_migrated_database(&args.db, async |db, client| {
        drop(client);
        // the writer's connection, one for the partitions its writes create, one for the lookups of markets
        let pool = db.pool(3, args.db.connect_timeout).await?;
        let rest = collect::rest::KalshiRest::new(&args.rest.base_url, args.rest.policy())?;
        let has = |c| args.channels.contains(&c);
        let mut options = collect::live::Options {
            ws_url: args.ws_url.clone(),
            series: args.series.clone(),
            events: args.events.clone(),
            markets: args.markets.clone(),
            channels: collect::live::Channels {
                trades: has(LiveChannel::Trade),
                books: has(LiveChannel::OrderbookDelta),
                lifecycle: has(LiveChannel::MarketLifecycleV2),
            },
            flush_messages: args.flush_messages as usize,
            flush_interval: args.flush_interval,
            heartbeat_timeout: args.heartbeat_timeout,
            raw_log: args.raw_log.clone(),
            ..collect::live::Options::default()
        };
        let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
        let health = match args.health_listen {
            Some(addr) => {
                let (reporter, served) = server::health_only(addr, async {
                    let _ = health_stopped.await;
                })
                .await?;
                options.health = Some(reporter);
                Some(served)
            }
            None => None,
        };
        let report = collect::live::run(&pool, &rest, key.as_ref(), &options, shutdown).await;
        let _ = stop_health.send(());
        if let Some(served) = health {
            served.await.map_err(|e| Error::Serve(e.to_string()))??;
        }
        print!("{}", report?.summary());
        Ok(())
    })
    .await
}

/// `demo`: like `serve`, on a sample dataset generated the first time.
pub async fn demo(args: DemoArgs) -> Result<(), Error> {
    on_migrated_database(&args.serve.db, async |db, mut client| {
        match count_markets(&client).await? {
            0 => {
                println!("loading the sample dataset (first start only)");
                load(&mut client, &args.dataset).await?;
            }
            markets => println!("using the sample data already loaded ({markets} markets)"),
        }
        serve_on(db, client, &args.serve, print_try_it).await
    })
    .await
}

/// Runs `work` on the database of `args` (starting the private cluster when DATABASE_URL is unset) and always
/// stops what it started, also after an error; the command's own error wins over a failure to stop.
pub(crate) async fn with_database(
    args: &DbArgs,
    work: impl AsyncFnOnce(&Database) -> Result<(), Error>,
) -> Result<(), Error> {
    let db = Database::open(&args.options()).await?;
    let result = work(&db).await;
    let stopped = db.shutdown().await;
    result?;
    stopped
}

/// [`with_database`], with a connection to the database after its pending migrations are applied.
pub(crate) async fn on_migrated_database(
    args: &DbArgs,
    work: impl AsyncFnOnce(&Database, Client) -> Result<(), Error>,
) -> Result<(), Error> {
    with_database(args, async |db| {
        let mut client = db.connect(args.connect_timeout).await?;
        migrate::run(&mut client).await?;
        work(db, client).await
    })
    .await
}

/// Creates the partitions ahead with `client` (of a migrated database), binds the listener, and serves until a
/// shutdown signal. `on_listening` runs once the port is bound.
async fn serve_on(db: &Database, client: Client, args: &ServeArgs, on_listening: fn(SocketAddr)) -> Result<(), Error> {
    let timeout = args.db.connect_timeout;
    partitions::ensure_ahead(&client, Utc::now(), args.partitions_ahead).await?;
    drop(client);
    let shutdown = shutdown_signal()?;
    let pools = Pools::open(db, args.db.pool_size, args.lookup_pool_size, timeout).await?;
    let listener =
        TcpListener::bind(args.listen).await.map_err(|e| Error::io(format!("listen on {}", args.listen), e))?;
    let local = listener.local_addr().map_err(|e| Error::io("read listener address", e))?;
    on_listening(local);
    let options = ServerOptions {
        partitions_ahead: args.partitions_ahead,
        limits: args.limits.limits(args.partitions_ahead),
        ..ServerOptions::default()
    };
    server::run(listener, pools, options, shutdown).await
}

pub(crate) async fn count_markets(client: &Client) -> Result<i64, Error> {
    Ok(client.query_one("SELECT count(*) FROM markets", &[]).await?.get(0))
}

/// Generates the dataset and reports what it loaded and how fast.
async fn load(client: &mut Client, dataset: &DatasetArgs) -> Result<(), Error> {
    let report = generate::generate(client, &dataset.spec()).await?;
    let end = dataset.start.checked_add_days(Days::new(u64::from(dataset.days))).unwrap_or(dataset.start);
    println!(
        "loaded {} rows in {:.1} s ({:.0} rows/s): {} series, {} events, {} markets, {} settlements, {} trades, \
         {} order-book snapshots, {} deltas, {} lifecycle events, from {} to {} (seed {})",
        report.total_rows(),
        report.elapsed.as_secs_f64(),
        report.rows_per_sec(),
        report.series,
        report.events,
        report.markets,
        report.settlements,
        report.trades,
        report.snapshots,
        report.deltas,
        report.lifecycle,
        dataset.start,
        end,
        dataset.seed,
    );
    Ok(())
}

fn print_try_it(addr: SocketAddr) {
    println!(
        "\nkalshi-replay is serving gRPC on {addr}; try:\n  \
         grpcurl -plaintext {addr} list\n  \
         grpcurl -plaintext {addr} grpc.health.v1.Health/Check\n  \
         grpcurl -plaintext {addr} describe kalshi.replay.v1.ReplayService\n\
         press Ctrl-C to stop\n"
    );
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed here, before the server
/// announces itself, so that a signal sent right after start-up is never missed (and never kills the process
/// with the default action, which would leave the private PostgreSQL to its parent-death signal).
pub(crate) fn shutdown_signal() -> Result<impl Future<Output = ()>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| Error::io("listen for SIGINT", e))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Error::io("listen for SIGTERM", e))?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("sigint received, shutting down"),
            _ = terminate.recv() => tracing::info!("sigterm received, shutting down"),
        }
    })
}
