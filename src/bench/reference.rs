//! `bench reference`: a load generator for ReferenceService over real gRPC.
//!
//! It learns real keys through the API itself (so it can load any server that holds data, not only the in-process
//! demo), then measures one RPC at a time rather than a mix, so that each row of the report is that RPC's own cost.
//! Callers are tasks on the command's tokio runtime spread over a few HTTP/2 connections, since one connection
//! serializes its frames and would cap the load before the server does. Latencies go into one hdrhistogram per
//! caller, merged at the end, so memory stays bounded however many calls a run makes.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use prost_types::Timestamp;
use rand::{SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};
use tonic::{
    Status,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    app,
    config::BenchReferenceArgs,
    error::{Error, error_chain},
    generate,
    proto::{
        GetCoverageRequest, GetEventRequest, GetMarketRequest, GetSeriesRequest, GetSettlementRequest,
        ListEventsRequest, ListMarketsRequest, ListSeriesRequest, ListSettlementsRequest, ListSettlementsResponse,
        reference_service_client::ReferenceServiceClient,
    },
    server::{self, Pools, ServerOptions},
};

type Client = ReferenceServiceClient<Channel>;

/// What a caller calls through: the service under test, and health for the transport floor.
#[derive(Debug, Clone)]
struct Clients {
    reference: Client,
    health: HealthClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Self { reference: Client::new(channel.clone()), health: HealthClient::new(channel) }
    }
}

/// The page size the List* rows ask for, and the number of markets per GetCoverage call.
const PAGE: usize = 100;
/// The page size of the discovery walks: the largest the service allows, for the fewest round trips.
const WALK_PAGE: i32 = 1000;
/// About how many page tokens the follow-up-page row picks from.
const TOKENS: usize = 64;
/// A call that takes longer counts as an error, so a stuck server cannot hang the bench.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Callers per HTTP/2 connection when --connections is unset.
const CALLERS_PER_CONNECTION: u32 = 8;
/// Width of the GetCoverage time range row.
const COVERAGE_RANGE_DAYS: i64 = 3;
const DAY_SECONDS: i64 = 86_400;

/// The p99 goals of issue 3, at concurrency 32 on a 2-core machine.
const GET_GOAL: Duration = Duration::from_millis(5);
const LIST_GOAL: Duration = Duration::from_millis(20);
const COVERAGE_GOAL: Duration = Duration::from_millis(20);

/// `bench reference`: against --addr, or against the demo dataset served in-process.
pub(crate) async fn run(args: BenchReferenceArgs) -> Result<(), Error> {
    // installed first so that Ctrl-C stops the bench cleanly (and with it any private PostgreSQL)
    let interrupted = app::shutdown_signal()?;
    let report = match &args.addr {
        Some(addr) => {
            let uri = if addr.contains("://") { addr.clone() } else { format!("http://{addr}") };
            interruptible(measure(&uri, &args, false), interrupted).await?
        }
        None => return in_process(args, interrupted).await,
    };
    print(&report, args.json);
    Ok(())
}

/// Opens the database as `demo` does, loads the demo dataset into an empty one, serves it on a free local port
/// and measures that server; stops everything it started, also after an error or Ctrl-C.
async fn in_process(args: BenchReferenceArgs, interrupted: impl Future<Output = ()>) -> Result<(), Error> {
    app::on_migrated_database(&args.db, async |db, mut client| {
        if app::count_markets(&client).await? == 0 {
            load_demo(&mut client, &args).await?;
        }
        drop(client);
        // lookups get the whole --pool-size, as the figures of earlier runs did
        let pools = Pools::open(db, args.db.pool_size, args.db.pool_size, args.db.connect_timeout).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::io("listen on 127.0.0.1:0", e))?;
        let local = listener.local_addr().map_err(|e| Error::io("read listener address", e))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server::run(listener, pools, ServerOptions::default(), async {
            let _ = stopped.await;
        }));
        let measured = interruptible(measure(&format!("http://{local}"), &args, true), interrupted).await;
        let _ = stop.send(());
        let stopped = served.await.map_err(|e| Error::Bench(format!("server task: {e}")));
        // the bench's own error says more than the server's
        let report = measured?;
        stopped??;
        print(&report, args.json);
        Ok(())
    })
    .await
}

/// Loads the demo dataset of --seed/--markets/..., reporting on stderr: stdout carries only the report, so that
/// --json output parses even on the run that loads the data.
async fn load_demo(client: &mut tokio_postgres::Client, args: &BenchReferenceArgs) -> Result<(), Error> {
    tracing::info!("loading the demo dataset (first run only)");
    let loaded = generate::generate(client, &args.dataset.spec()).await?;
    tracing::info!(
        rows = loaded.total_rows(),
        markets = loaded.markets,
        trades = loaded.trades,
        seconds = format!("{:.1}", loaded.elapsed.as_secs_f64()),
        "demo dataset loaded"
    );
    Ok(())
}

async fn interruptible<T>(
    work: impl Future<Output = Result<T, Error>>,
    interrupted: impl Future<Output = ()>,
) -> Result<T, Error> {
    tokio::select! {
        result = work => result,
        () = interrupted => Err(Error::Bench("interrupted".to_owned())),
    }
}

/// Connects, discovers keys, and measures every RPC in turn.
async fn measure(uri: &str, args: &BenchReferenceArgs, in_process: bool) -> Result<Report, Error> {
    let ops = Op::selected(&args.rpcs)?;
    let concurrency = args.concurrency.max(1);
    let connections = args.connections.unwrap_or(concurrency.div_ceil(CALLERS_PER_CONNECTION)).clamp(1, concurrency);
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| Error::invalid("--addr", format!("not HOST:PORT or an http:// URL: {e}")))?
        .connect_timeout(args.db.connect_timeout)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        // one connect() per channel: each is its own TCP connection
        let channel =
            endpoint.connect().await.map_err(|e| Error::Bench(format!("connect to {uri}: {}", error_chain(&e))))?;
        channels.push(channel);
    }
    let mut client = Client::new(channels[0].clone());
    tracing::info!(%uri, "discovering keys");
    let keys = Arc::new(discover(&mut client).await?);
    tracing::info!(
        series = keys.series.len(),
        events = keys.events.len(),
        markets = keys.markets.len(),
        settled = keys.settled.len(),
        "keys discovered"
    );

    let mut report = Report {
        addr: uri.trim_start_matches("http://").to_owned(),
        in_process,
        concurrency,
        connections,
        duration: args.duration,
        warmup: args.warmup,
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    for op in ops {
        let label = op.label(&keys);
        if let Some(reason) = op.missing(&keys) {
            tracing::warn!(rpc = %label, reason, "skipped");
            report.skipped.push((label, reason));
            continue;
        }
        tracing::info!(rpc = %label, "measuring");
        let phase = Phase { op, seed: args.dataset.seed, warmup: args.warmup, duration: args.duration };
        let tally = phase.run(&channels, concurrency, &keys).await?;
        report.rows.push(Row::new(label, op.goal(), &tally));
    }
    Ok(report)
}

/// One RPC's measurement: warm-up, then `duration` of recorded calls by every caller.
struct Phase {
    op: Op,
    seed: u64,
    warmup: Duration,
    duration: Duration,
}

impl Phase {
    async fn run(&self, channels: &[Channel], concurrency: u32, keys: &Arc<Keys>) -> Result<Tally, Error> {
        let start = Instant::now();
        let record_from = start + self.warmup;
        let until = record_from + self.duration;
        let mut callers = JoinSet::new();
        for caller in 0..concurrency {
            let client = Clients::new(channels[caller as usize % channels.len()].clone());
            // a stream per (row, caller): the keys a caller picks depend neither on how the others are
            // scheduled nor on which other rows run
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(((self.op as u64) << 32) | u64::from(caller));
            callers.spawn(call_until(client, self.op, Arc::clone(keys), rng, record_from, until));
        }
        let mut total = Tally::new()?;
        while let Some(joined) = callers.join_next().await {
            let tally = joined.map_err(|e| Error::Bench(format!("caller task: {e}")))??;
            total.merge(tally)?;
        }
        total.seconds = record_from.elapsed().as_secs_f64();
        Ok(total)
    }
}

/// One caller: back-to-back calls until `until`, recording those that start at or after `record_from`.
async fn call_until(
    mut client: Clients,
    op: Op,
    keys: Arc<Keys>,
    mut rng: ChaCha8Rng,
    record_from: Instant,
    until: Instant,
) -> Result<Tally, Error> {
    let mut tally = Tally::new()?;
    loop {
        let began = Instant::now();
        if began >= until {
            return Ok(tally);
        }
        let (latency, outcome) = op.call(&mut client, &keys, &mut rng).await;
        if began >= record_from {
            tally.record(latency, outcome);
        }
    }
}

/// The rows of the report, in order: each RPC, and the variants whose cost differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// grpc.health.v1 Check: the same gRPC round trip with no database and nothing to encode, the floor the
    /// lookups are compared to.
    Floor,
    GetSeries,
    GetEvent,
    GetEventWithMarkets,
    GetMarket,
    GetSettlement,
    ListSeries,
    ListEvents,
    ListMarkets,
    ListMarketsOfSeries,
    ListMarketsNextPage,
    ListSettlements,
    GetCoverage,
    GetCoverageRange,
}

impl Op {
    const ALL: [Op; 14] = [
        Op::Floor,
        Op::GetSeries,
        Op::GetEvent,
        Op::GetEventWithMarkets,
        Op::GetMarket,
        Op::GetSettlement,
        Op::ListSeries,
        Op::ListEvents,
        Op::ListMarkets,
        Op::ListMarketsOfSeries,
        Op::ListMarketsNextPage,
        Op::ListSettlements,
        Op::GetCoverage,
        Op::GetCoverageRange,
    ];

    /// The RPC this row calls.
    fn rpc(self) -> &'static str {
        match self {
            Op::Floor => "Check",
            Op::GetSeries => "GetSeries",
            Op::GetEvent | Op::GetEventWithMarkets => "GetEvent",
            Op::GetMarket => "GetMarket",
            Op::GetSettlement => "GetSettlement",
            Op::ListSeries => "ListSeries",
            Op::ListEvents => "ListEvents",
            Op::ListMarkets | Op::ListMarketsOfSeries | Op::ListMarketsNextPage => "ListMarkets",
            Op::ListSettlements => "ListSettlements",
            Op::GetCoverage | Op::GetCoverageRange => "GetCoverage",
        }
    }

    /// The rows of the RPCs named in `names` (any case), all rows for none; an unknown name is an error rather
    /// than a run that silently measures nothing.
    fn selected(names: &[String]) -> Result<Vec<Op>, Error> {
        if let Some(unknown) = names.iter().find(|n| !Op::ALL.iter().any(|op| op.rpc().eq_ignore_ascii_case(n))) {
            let known: BTreeSet<&str> = Op::ALL.iter().map(|op| op.rpc()).collect();
            let known: Vec<&str> = known.into_iter().collect();
            return Err(Error::invalid("--rpc", format!("unknown RPC {unknown:?}; known: {}", known.join(", "))));
        }
        Ok(Op::ALL
            .into_iter()
            .filter(|op| names.is_empty() || names.iter().any(|n| op.rpc().eq_ignore_ascii_case(n)))
            .collect())
    }

    fn label(self, keys: &Keys) -> String {
        let coverage = keys.markets.len().min(PAGE);
        match self {
            Op::Floor => "Health.Check (floor)".to_owned(),
            Op::GetSeries => "GetSeries".to_owned(),
            Op::GetEvent => "GetEvent".to_owned(),
            Op::GetEventWithMarkets => "GetEvent(markets)".to_owned(),
            Op::GetMarket => "GetMarket".to_owned(),
            Op::GetSettlement => "GetSettlement".to_owned(),
            Op::ListSeries => format!("ListSeries({PAGE})"),
            Op::ListEvents => format!("ListEvents({PAGE})"),
            Op::ListMarkets => format!("ListMarkets({PAGE})"),
            Op::ListMarketsOfSeries => format!("ListMarkets({PAGE}, series)"),
            Op::ListMarketsNextPage => format!("ListMarkets({PAGE}, token)"),
            Op::ListSettlements => format!("ListSettlements({PAGE})"),
            Op::GetCoverage => format!("GetCoverage({coverage})"),
            Op::GetCoverageRange => format!("GetCoverage({coverage}, {COVERAGE_RANGE_DAYS}d)"),
        }
    }

    /// The p99 goal; the floor has none (it is the reference).
    fn goal(self) -> Option<Duration> {
        Some(match self {
            Op::Floor => return None,
            Op::GetSeries | Op::GetEvent | Op::GetEventWithMarkets | Op::GetMarket | Op::GetSettlement => GET_GOAL,
            Op::ListSeries
            | Op::ListEvents
            | Op::ListMarkets
            | Op::ListMarketsOfSeries
            | Op::ListMarketsNextPage
            | Op::ListSettlements => LIST_GOAL,
            Op::GetCoverage | Op::GetCoverageRange => COVERAGE_GOAL,
        })
    }

    /// Why this row cannot run on the server's data, if it cannot.
    fn missing(self, keys: &Keys) -> Option<&'static str> {
        match self {
            Op::GetSeries if keys.series.is_empty() => Some("no series"),
            Op::GetEvent | Op::GetEventWithMarkets if keys.events.is_empty() => Some("no events"),
            Op::GetSettlement if keys.settled.is_empty() => Some("no settlements"),
            Op::ListMarketsOfSeries if keys.market_series.is_empty() => Some("no markets with a series"),
            Op::ListMarketsNextPage if keys.market_pages.is_empty() => Some("fewer than two markets"),
            Op::GetCoverageRange if keys.span.is_none() => Some("no market has open and close times"),
            _ => None,
        }
    }

    /// One call with random keys; the latency covers the round trip and decoding, not building the request.
    async fn call(self, clients: &mut Clients, keys: &Keys, rng: &mut ChaCha8Rng) -> (Duration, Result<(), Status>) {
        let page_size = PAGE as i32;
        let client = &mut clients.reference;
        match self {
            Op::Floor => timed(clients.health.check(HealthCheckRequest { service: String::new() })).await,
            Op::GetSeries => timed(client.get_series(GetSeriesRequest { ticker: pick(&keys.series, rng) })).await,
            Op::GetEvent | Op::GetEventWithMarkets => {
                let include_markets = self == Op::GetEventWithMarkets;
                let request = GetEventRequest { event_ticker: pick(&keys.events, rng), include_markets };
                timed(client.get_event(request)).await
            }
            Op::GetMarket => timed(client.get_market(GetMarketRequest { ticker: pick(&keys.markets, rng) })).await,
            Op::GetSettlement => {
                let request = GetSettlementRequest { market_ticker: pick(&keys.settled, rng) };
                timed(client.get_settlement(request)).await
            }
            Op::ListSeries => timed(client.list_series(ListSeriesRequest { page_size, ..Default::default() })).await,
            Op::ListEvents => timed(client.list_events(ListEventsRequest { page_size, ..Default::default() })).await,
            Op::ListMarkets => timed(client.list_markets(ListMarketsRequest { page_size, ..Default::default() })).await,
            Op::ListMarketsOfSeries => {
                let series_ticker = pick(&keys.market_series, rng);
                timed(client.list_markets(ListMarketsRequest { series_ticker, page_size, ..Default::default() })).await
            }
            Op::ListMarketsNextPage => {
                let page_token = pick(&keys.market_pages, rng);
                timed(client.list_markets(ListMarketsRequest { page_token, page_size, ..Default::default() })).await
            }
            Op::ListSettlements => {
                timed(client.list_settlements(ListSettlementsRequest { page_size, ..Default::default() })).await
            }
            Op::GetCoverage | Op::GetCoverageRange => {
                let market_tickers = keys.markets.choose_multiple(rng, PAGE).cloned().collect();
                let (start_time, end_time) = match (self, keys.span) {
                    (Op::GetCoverageRange, Some(span)) => {
                        let (start, end) = coverage_window(span, rng);
                        (Some(start), Some(end))
                    }
                    _ => (None, None),
                };
                timed(client.get_coverage(GetCoverageRequest { market_tickers, start_time, end_time })).await
            }
        }
    }
}

/// Awaits one call; one that outlives CALL_TIMEOUT is DEADLINE_EXCEEDED.
async fn timed<T>(call: impl Future<Output = Result<T, Status>>) -> (Duration, Result<(), Status>) {
    let began = Instant::now();
    let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}"))),
    };
    (began.elapsed(), outcome)
}

/// A random element; the rows whose key set is empty are skipped before any call, so "" never goes out.
fn pick(keys: &[String], rng: &mut ChaCha8Rng) -> String {
    keys.choose(rng).cloned().unwrap_or_default()
}

/// A random range of whole UTC days, COVERAGE_RANGE_DAYS long, that overlaps `span` (seconds since the epoch).
fn coverage_window((first, last): (i64, i64), rng: &mut impl rand::Rng) -> (Timestamp, Timestamp) {
    let first_day = first.div_euclid(DAY_SECONDS);
    let last_start = (last.div_euclid(DAY_SECONDS) - (COVERAGE_RANGE_DAYS - 1)).max(first_day);
    let day = rng.random_range(first_day..=last_start);
    let at = |day: i64| Timestamp { seconds: day * DAY_SECONDS, nanos: 0 };
    (at(day), at(day + COVERAGE_RANGE_DAYS))
}

/// Real keys of the server, learned through its List RPCs.
#[derive(Debug, Default)]
struct Keys {
    series: Vec<String>,
    events: Vec<String>,
    markets: Vec<String>,
    /// Series that have markets, so that a series filter finds some.
    market_series: Vec<String>,
    settled: Vec<String>,
    /// ListMarkets page tokens with (where the data allows) a full page after them.
    market_pages: Vec<String>,
    /// Earliest market open and latest market close, seconds since the epoch.
    span: Option<(i64, i64)>,
}

/// Walks every List RPC to the end.
async fn discover(client: &mut Client) -> Result<Keys, Error> {
    let failed = |rpc: &str, status: Status| Error::Bench(format!("discover keys with {rpc}: {}", describe(&status)));
    let mut keys = Keys::default();

    let mut page_token = String::new();
    loop {
        let request = ListSeriesRequest { page_size: WALK_PAGE, page_token, ..Default::default() };
        let page = client.list_series(request).await.map_err(|s| failed("ListSeries", s))?.into_inner();
        keys.series.extend(page.series.into_iter().map(|s| s.ticker));
        match page.next_page_token {
            t if t.is_empty() => break,
            t => page_token = t,
        }
    }

    let mut page_token = String::new();
    loop {
        let request = ListEventsRequest { page_size: WALK_PAGE, page_token, ..Default::default() };
        let page = client.list_events(request).await.map_err(|s| failed("ListEvents", s))?.into_inner();
        keys.events.extend(page.events.into_iter().map(|e| e.event_ticker));
        match page.next_page_token {
            t if t.is_empty() => break,
            t => page_token = t,
        }
    }

    let mut market_series = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let request = ListMarketsRequest { page_size: WALK_PAGE, page_token, ..Default::default() };
        let page = client.list_markets(request).await.map_err(|s| failed("ListMarkets", s))?.into_inner();
        for market in page.markets {
            if let (Some(open), Some(close)) = (&market.open_time, &market.close_time) {
                let (first, last) = keys.span.get_or_insert((open.seconds, close.seconds));
                *first = (*first).min(open.seconds);
                *last = (*last).max(close.seconds);
            }
            if !market.series_ticker.is_empty() {
                market_series.insert(market.series_ticker);
            }
            keys.markets.push(market.ticker);
        }
        match page.next_page_token {
            t if t.is_empty() => break,
            t => page_token = t,
        }
    }
    keys.market_series = market_series.into_iter().collect();

    let mut page_token = String::new();
    loop {
        let request = ListSettlementsRequest { page_size: WALK_PAGE, page_token, ..Default::default() };
        let ListSettlementsResponse { settlements, next_page_token } =
            client.list_settlements(request).await.map_err(|s| failed("ListSettlements", s))?.into_inner();
        keys.settled.extend(settlements.into_iter().map(|s| s.market_ticker));
        match next_page_token {
            t if t.is_empty() => break,
            t => page_token = t,
        }
    }

    // A token is bound to the filters, not to the page size, so tokens from a walk in small steps serve pages of
    // PAGE rows starting all over the table.
    let total = keys.markets.len();
    let step = (total / TOKENS).clamp(1, WALK_PAGE as usize);
    let mut tokens = Vec::new();
    let mut seen = 0;
    let mut page_token = String::new();
    loop {
        let request = ListMarketsRequest { page_size: step as i32, page_token, ..Default::default() };
        let page = client.list_markets(request).await.map_err(|s| failed("ListMarkets", s))?.into_inner();
        seen += page.markets.len();
        match page.next_page_token {
            t if t.is_empty() => break,
            t => {
                tokens.push((t.clone(), total.saturating_sub(seen)));
                page_token = t;
            }
        }
    }
    keys.market_pages = full_page_tokens(tokens, PAGE);

    if keys.markets.is_empty() {
        return Err(Error::Bench("the server holds no markets; load data first (e.g. with `generate`)".to_owned()));
    }
    Ok(keys)
}

/// The tokens followed by at least `page` rows, so that each call of the follow-up-page row costs the same; all
/// of them when the table is too small for that.
fn full_page_tokens(tokens: Vec<(String, usize)>, page: usize) -> Vec<String> {
    let full: Vec<String> = tokens.iter().filter(|(_, rest)| *rest >= page).map(|(t, _)| t.clone()).collect();
    if full.is_empty() { tokens.into_iter().map(|(t, _)| t).collect() } else { full }
}

/// What a caller (or, merged, all of them) saw in one phase.
#[derive(Debug)]
struct Tally {
    /// Latencies of the successful calls, in microseconds.
    histogram: Histogram<u64>,
    /// Latencies of the failed calls, kept apart so that fast failures cannot flatter the figures.
    failed: Histogram<u64>,
    calls: u64,
    errors: u64,
    first_error: Option<Status>,
    seconds: f64,
}

impl Tally {
    fn new() -> Result<Self, Error> {
        // 1 µs to twice the call timeout at 3 significant digits: ~140 KiB each
        let max = (CALL_TIMEOUT.as_micros() as u64).saturating_mul(2);
        let new = || Histogram::new_with_bounds(1, max, 3).map_err(|e| Error::Bench(format!("histogram: {e}")));
        Ok(Self { histogram: new()?, failed: new()?, calls: 0, errors: 0, first_error: None, seconds: 0.0 })
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), Status>) {
        self.calls += 1;
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        match outcome {
            Ok(()) => self.histogram.saturating_record(micros),
            Err(status) => {
                self.failed.saturating_record(micros);
                self.errors += 1;
                self.first_error.get_or_insert(status);
            }
        }
    }

    fn merge(&mut self, other: Tally) -> Result<(), Error> {
        let merge_failed = |e| Error::Bench(format!("merge histograms: {e:?}"));
        self.histogram.add(&other.histogram).map_err(merge_failed)?;
        self.failed.add(&other.failed).map_err(merge_failed)?;
        self.calls += other.calls;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The outcome of a run, ready to print.
#[derive(Debug)]
struct Report {
    addr: String,
    in_process: bool,
    concurrency: u32,
    connections: u32,
    duration: Duration,
    warmup: Duration,
    rows: Vec<Row>,
    skipped: Vec<(String, &'static str)>,
}

/// One RPC's figures; latencies in milliseconds, p50 to max of the successful calls only (None when there were
/// none).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    rpc: String,
    calls: u64,
    errors: u64,
    seconds: f64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    goal: Option<Duration>,
    first_error: Option<String>,
    /// p50 and p99 of the failed calls, in milliseconds.
    error_p50: Option<f64>,
    error_p99: Option<f64>,
}

impl Row {
    fn new(rpc: String, goal: Option<Duration>, tally: &Tally) -> Self {
        let (h, f) = (&tally.histogram, &tally.failed);
        let ms = |h: &Histogram<u64>, micros: u64| (!h.is_empty()).then(|| micros as f64 / 1000.0);
        Self {
            rpc,
            calls: tally.calls,
            errors: tally.errors,
            seconds: tally.seconds,
            p50: ms(h, h.value_at_quantile(0.50)),
            p90: ms(h, h.value_at_quantile(0.90)),
            p99: ms(h, h.value_at_quantile(0.99)),
            max: ms(h, h.max()),
            goal,
            first_error: tally.first_error.as_ref().map(describe),
            error_p50: ms(f, f.value_at_quantile(0.50)),
            error_p99: ms(f, f.value_at_quantile(0.99)),
        }
    }

    fn calls_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.calls as f64 / self.seconds } else { 0.0 }
    }

    /// Against the goal: p99 under it, and no errors (a failing RPC meets no goal, however fast it fails).
    fn pass(&self) -> Option<bool> {
        let goal = self.goal?.as_secs_f64() * 1000.0;
        Some(self.errors == 0 && self.p99.is_some_and(|p99| p99 < goal))
    }
}

fn print(report: &Report, json: bool) {
    if json {
        println!("{}", render_json(report));
    } else {
        print!("{}", render_table(report));
    }
}

fn render_table(report: &Report) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let width = report.rows.iter().map(|r| r.rpc.len()).chain([3]).max().unwrap_or(3);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ReferenceService at {}{}: {} callers on {} connections, {} per RPC after {} warm-up",
        report.addr,
        if report.in_process { " (in-process server)" } else { "" },
        report.concurrency,
        report.connections,
        humantime::format_duration(report.duration),
        humantime::format_duration(report.warmup),
    );
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>7}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  goal",
        "rpc", "calls", "errors", "calls/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for row in &report.rows {
        let goal = match (row.goal, row.pass()) {
            (Some(goal), Some(pass)) => {
                format!("p99 < {} ms {}", goal.as_millis(), if pass { "PASS" } else { "MISS" })
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>7}  {:>9.1}  {:>8}  {:>8}  {:>8}  {:>8}  {goal}",
            row.rpc,
            row.calls,
            row.errors,
            row.calls_per_sec(),
            ms(row.p50),
            ms(row.p90),
            ms(row.p99),
            ms(row.max),
        );
    }
    out.push_str("latencies are of successful calls; an RPC with errors misses its goal\n");
    for row in report.rows.iter().filter(|r| r.errors > 0) {
        let first = row.first_error.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "{}: {} errors (p50 {} ms, p99 {} ms), the first: {first}",
            row.rpc,
            row.errors,
            ms(row.error_p50),
            ms(row.error_p99)
        );
    }
    for (rpc, reason) in &report.skipped {
        let _ = writeln!(out, "{rpc}: skipped, {reason}");
    }
    out
}

/// Hand-written (a flat object of numbers and short strings does not warrant serde_json).
fn render_json(report: &Report) -> String {
    let num = |v: Option<f64>| v.map_or_else(|| "null".to_owned(), |v| format!("{v:.3}"));
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"service\":\"ReferenceService\",\"addr\":{},\"in_process\":{},\"concurrency\":{},\"connections\":{},\
         \"duration_s\":{:.3},\"warmup_s\":{:.3},\"rpcs\":[",
        json_string(&report.addr),
        report.in_process,
        report.concurrency,
        report.connections,
        report.duration.as_secs_f64(),
        report.warmup.as_secs_f64(),
    );
    for (i, row) in report.rows.iter().enumerate() {
        let goal = row.goal.map(|g| g.as_secs_f64() * 1000.0);
        let pass = row.pass().map_or_else(|| "null".to_owned(), |p| p.to_string());
        let first_error = row.first_error.as_deref().map_or_else(|| "null".to_owned(), json_string);
        let _ = write!(
            out,
            "{}{{\"rpc\":{},\"calls\":{},\"errors\":{},\"calls_per_s\":{:.1},\"p50_ms\":{},\"p90_ms\":{},\
             \"p99_ms\":{},\"max_ms\":{},\"goal_p99_ms\":{},\"pass\":{pass},\"first_error\":{first_error},\"error_p50_ms\":{},\"error_p99_ms\":{}}}",
            if i == 0 { "" } else { "," },
            json_string(&row.rpc),
            row.calls,
            row.errors,
            row.calls_per_sec(),
            num(row.p50),
            num(row.p90),
            num(row.p99),
            num(row.max),
            num(goal),
            num(row.error_p50),
            num(row.error_p99),
        );
    }
    out.push_str("],\"skipped\":[");
    for (i, (rpc, reason)) in report.skipped.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"rpc\":{},\"reason\":{}}}",
            if i == 0 { "" } else { "," },
            json_string(rpc),
            json_string(reason)
        );
    }
    out.push_str("]}");
    out
}

/// A JSON string literal (RFC 8259 escapes).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rpc: &str, errors: u64, p99: Option<f64>, goal_ms: u64) -> Row {
        Row {
            rpc: rpc.to_owned(),
            calls: 1000,
            errors,
            seconds: 2.0,
            p50: p99.map(|v| v / 4.0),
            p90: p99.map(|v| v / 2.0),
            p99,
            max: p99.map(|v| v * 2.0),
            goal: Some(Duration::from_millis(goal_ms)),
            first_error: (errors > 0).then(|| "ResourceExhausted: coverage \"not\" yet".to_owned()),
            error_p50: (errors > 0).then_some(0.25),
            error_p99: (errors > 0).then_some(0.5),
        }
    }

    fn report() -> Report {
        Report {
            addr: "127.0.0.1:4000".to_owned(),
            in_process: true,
            concurrency: 32,
            connections: 4,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rows: vec![
                row("GetSeries", 0, Some(1.5), 5),
                row("ListMarkets(100)", 0, Some(25.0), 20),
                row("GetCoverage(100)", 1000, None, 20),
            ],
            skipped: vec![("GetSettlement".to_owned(), "no settlements")],
        }
    }

    #[test]
    fn a_goal_passes_only_under_it_and_without_errors() {
        assert_eq!(row("a", 0, Some(4.99), 5).pass(), Some(true));
        assert_eq!(row("a", 0, Some(5.0), 5).pass(), Some(false));
        assert_eq!(row("a", 1, Some(1.0), 5).pass(), Some(false), "errors miss the goal");
        assert_eq!(row("a", 1000, None, 5).pass(), Some(false), "no successful call");
        assert_eq!(Row { goal: None, ..row("a", 0, Some(1.0), 5) }.pass(), None);
    }

    #[test]
    fn the_table_has_a_line_per_rpc_with_its_verdict_and_names_errors_and_skips() {
        let table = render_table(&report());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("127.0.0.1:4000 (in-process server): 32 callers on 4 connections, 10s"), "{table}");
        assert!(lines[1].starts_with("rpc ") && lines[1].ends_with("goal"), "{table}");
        let get = lines[2];
        assert!(get.starts_with("GetSeries ") && get.contains(" 500.0 ") && get.contains(" 1.50 "), "{get}");
        assert!(get.ends_with("p99 < 5 ms PASS"), "{get}");
        assert!(lines[3].ends_with("p99 < 20 ms MISS"), "{}", lines[3]);
        assert!(lines[4].contains(" 1000 ") && lines[4].contains(" - ") && lines[4].ends_with("MISS"), "{}", lines[4]);
        assert!(
            table.contains("GetCoverage(100): 1000 errors (p50 0.25 ms, p99 0.50 ms), the first: ResourceExhausted"),
            "{table}"
        );
        assert!(table.contains("GetSettlement: skipped, no settlements"), "{table}");
        // columns line up: every row is as wide as the header up to the goal column
        let goal_at = lines[1].find("goal").expect("goal column");
        assert!(lines[2..5].iter().all(|l| l.find("p99 <") == Some(goal_at)), "{table}");
    }

    #[test]
    fn the_json_has_an_entry_per_rpc_with_escaped_strings_and_nulls() {
        let json = render_json(&report());
        assert!(json.starts_with("{\"service\":\"ReferenceService\",\"addr\":\"127.0.0.1:4000\",\"in_process\":true,"));
        assert!(json.contains(
            "{\"rpc\":\"GetSeries\",\"calls\":1000,\"errors\":0,\"calls_per_s\":500.0,\"p50_ms\":0.375,\
             \"p90_ms\":0.750,\"p99_ms\":1.500,\"max_ms\":3.000,\"goal_p99_ms\":5.000,\"pass\":true,\"first_error\":null,\"error_p50_ms\":null,\
             \"error_p99_ms\":null}"
        ));
        assert!(json.contains("\"p99_ms\":null"), "{json}");
        assert!(
            json.contains("\"first_error\":\"ResourceExhausted: coverage \\\"not\\\" yet\",\"error_p50_ms\":0.250,"),
            "{json}"
        );
        assert!(json.ends_with("\"skipped\":[{\"rpc\":\"GetSettlement\",\"reason\":\"no settlements\"}]}"), "{json}");
        assert_eq!(json.matches("\"rpc\":").count(), 4);
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn coverage_windows_are_whole_days_overlapping_the_data() {
        let day = DAY_SECONDS;
        let span = (20_458 * day + 3_600, 20_465 * day + 7_200); // 2026-01-05 01:00 to 2026-01-12 02:00
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut starts = BTreeSet::new();
        for _ in 0..500 {
            let (start, end) = coverage_window(span, &mut rng);
            assert_eq!((start.seconds % day, end.seconds - start.seconds), (0, 3 * day));
            assert!(start.seconds >= 20_458 * day && end.seconds <= 20_466 * day, "{start:?}");
            starts.insert(start.seconds / day);
        }
        assert_eq!(starts, (20_458..=20_463).collect(), "every start day occurs");
        // data shorter than the window: the window starts on the data's first day
        let short = (20_458 * day + 10, 20_458 * day + 20);
        assert_eq!(coverage_window(short, &mut rng).0.seconds, 20_458 * day);
    }

    #[test]
    fn rpc_names_select_their_rows_and_unknown_names_are_refused() {
        assert_eq!(Op::selected(&[]).expect("all"), Op::ALL);
        let names = ["listmarkets".to_owned(), "GetEvent".to_owned()];
        let ops = Op::selected(&names).expect("known");
        assert_eq!(
            ops,
            [Op::GetEvent, Op::GetEventWithMarkets, Op::ListMarkets, Op::ListMarketsOfSeries, Op::ListMarketsNextPage]
        );
        let error = Op::selected(&["GetMarkets".to_owned()]).expect_err("unknown").to_string();
        assert!(
            error.starts_with("--rpc: unknown RPC \"GetMarkets\"; known: Check, GetCoverage, GetEvent,"),
            "{error}"
        );
    }

    #[test]
    fn follow_up_tokens_prefer_those_with_a_full_page_after_them() {
        let tokens = vec![("a".to_owned(), 150), ("b".to_owned(), 100), ("c".to_owned(), 99), ("d".to_owned(), 0)];
        assert_eq!(full_page_tokens(tokens, 100), ["a", "b"]);
        let small = vec![("a".to_owned(), 20), ("b".to_owned(), 10)];
        assert_eq!(full_page_tokens(small, 100), ["a", "b"]);
        assert!(full_page_tokens(Vec::new(), 100).is_empty());
    }

    #[test]
    fn tallies_merge_counts_histograms_and_keep_the_first_error() {
        let mut a = Tally::new().expect("tally");
        a.record(Duration::from_micros(1500), Ok(()));
        a.record(Duration::from_micros(10), Err(Status::not_found("x")));
        let mut b = Tally::new().expect("tally");
        b.record(Duration::from_millis(3), Ok(()));
        b.record(Duration::from_secs(3600), Ok(())); // beyond the histogram's range: clamped, not lost
        b.record(Duration::from_micros(10), Err(Status::internal("y")));
        a.merge(b).expect("merge");
        assert_eq!((a.calls, a.errors, a.histogram.len(), a.failed.len()), (5, 2, 3, 2));
        assert_eq!(a.first_error.map(|s| s.message().to_owned()).as_deref(), Some("x"));
    }
}
