//! Synthetic Kalshi-shaped datasets for demos, benchmarks and tests, loaded with binary COPY.
//!
//! Determinism comes from ChaCha8 streams keyed by the seed: stream 0 plans the hierarchy (series, events,
//! markets, settlements, how many trades each market gets), and every market has its own trade stream and book
//! stream. A market's rows therefore depend only on the seed and its plan, so the trade walk can be replayed
//! cheaply for each table it feeds (trades, then deltas, then snapshots) instead of holding rows in memory until
//! their COPY comes up. Floats only weigh choices (market activity, the odds of a step's direction); prices, counts
//! and times are integers throughout.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::pin::pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use rust_decimal::Decimal;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Transaction};

/// What to generate. Same spec => identical rows, byte for byte (except ingest_seq, which the database assigns).
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub seed: u64,
    pub markets: u32,
    pub days: u32,
    pub trades: u64,
    pub start: NaiveDate,
}

/// Row counts loaded and the time it took.
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
    pub elapsed: Duration,
}

impl GenerateReport {
    /// Rows loaded into all tables.
    pub fn total_rows(&self) -> u64 {
        self.series
            + self.events
            + self.markets
            + self.settlements
            + self.trades
            + self.snapshots
            + self.deltas
            + self.lifecycle
    }

    /// Load throughput over the whole run (0 when nothing was timed).
    pub fn rows_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.total_rows() as f64 / secs } else { 0.0 }
    }
}

/// Generates the dataset and loads it into an empty, migrated database.
///
/// All rows go in one transaction: a failure leaves no row behind, and readers never see half a dataset. The day
/// partitions are created before it, a month per statement, and stay (empty) if the load fails: creating a long
/// range's thousands of partitions in the load transaction would exhaust the server's lock table. For the same
/// reason a range with rows on more than a few hundred days needs a larger `max_locks_per_transaction`, since the
/// load holds a lock on every partition it writes and on their indexes. The caller has checked that the database
/// is empty and that the spec has at least one market and one day.
///
/// # Panics
/// If the range ends beyond what chrono represents (year 262143).
pub async fn generate(client: &mut Client, spec: &DatasetSpec) -> Result<GenerateReport, Error> {
    let started = Instant::now();
    let plan = Plan::new(spec);
    for from in (plan.start..plan.end).step_by(PARTITION_CHUNK as usize) {
        let to = (from + PARTITION_CHUNK).min(plan.end);
        client.execute("SELECT ensure_daily_partitions($1, $2)", &[&at(from), &at(to)]).await?;
    }
    let tx = client.transaction().await?;
    let mut report = GenerateReport {
        series: timed("series", copy_series(&tx, &plan)).await?,
        events: timed("events", copy_events(&tx, &plan)).await?,
        markets: timed("markets", copy_markets(&tx, &plan)).await?,
        settlements: timed("settlements", copy_settlements(&tx, &plan)).await?,
        lifecycle: timed("lifecycle", copy_lifecycle(&tx, &plan)).await?,
        trades: timed("trades", copy_trades(&tx, &plan)).await?,
        deltas: timed("deltas", copy_deltas(&tx, &plan)).await?,
        snapshots: timed("snapshots", copy_snapshots(&tx, &plan)).await?,
        ..GenerateReport::default()
    };
    tx.commit().await?;
    report.elapsed = started.elapsed();
    tracing::info!(
        seed = spec.seed,
        rows = report.total_rows(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        rows_per_sec = report.rows_per_sec() as u64,
        "generated synthetic dataset"
    );
    Ok(report)
}

/// Per-table load times, the first thing to look at when the load gets slow.
async fn timed(table: &str, copy: impl Future<Output = Result<u64, Error>>) -> Result<u64, Error> {
    let started = Instant::now();
    let rows = copy.await?;
    tracing::debug!(table, rows, elapsed_ms = started.elapsed().as_millis() as u64, "loaded table");
    Ok(rows)
}

const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// One dollar in micro-dollars: what a YES contract pays.
const DOLLAR: i64 = 1_000_000;
const CENT: i64 = 10_000;
/// Days of partitions created per statement (each day is 4 tables and 8 indexes, each locked until commit).
const PARTITION_CHUNK: i64 = 30 * DAY;
/// Walk bounds: a market never trades below 1 cent or above 99 cents on whole-cent ticks.
const MIN_WALK: i64 = CENT;
const MAX_WALK: i64 = DOLLAR - CENT;

const YES: i16 = 1;
const NO: i16 = 2;
const STATUS_ACTIVE: i16 = 3;
const STATUS_FINALIZED: i16 = 8;
const MARKET_BINARY: i16 = 1;
const RESULT_YES: i16 = 1;
const RESULT_NO: i16 = 2;
const RESULT_VOID: i16 = 4;
const LC_CREATED: i16 = 1;
const LC_ACTIVATED: i16 = 2;
const LC_CLOSE_DATE_UPDATED: i16 = 4;
const LC_DETERMINED: i16 = 5;
const LC_SETTLED: i16 = 6;

/// Strikes are values of the underlying, kept in thousandths so that bucket midpoints stay exact.
const STRIKE_SCALE: u32 = 3;
const CATEGORIES: [(&str, &str); 5] = [
    ("Economics", "Inflation"),
    ("Crypto", "BTC"),
    ("Climate and Weather", "Daily temperature"),
    ("Financials", "S&P"),
    ("Companies", "Earnings"),
];

/// The whole dataset minus the fact rows: O(markets) memory.
struct Plan {
    seed: u64,
    start: i64,
    end: i64,
    /// Reference rows look fetched a day after the range, when every settlement written here is already known.
    updated_at: DateTime<Utc>,
    series: Vec<Series>,
    events: Vec<Event>,
    markets: Vec<Market>,
}

struct Series {
    ticker: String,
    title: String,
    category: &'static str,
    tags: Vec<String>,
}

struct Event {
    ticker: String,
    series: usize,
    title: String,
    sub_title: String,
    category: &'static str,
    between: bool,
    open: i64,
    close: i64,
    /// Instants (news, data releases) at which all of the event's markets trade: ties across markets.
    sync: Vec<i64>,
}

struct Market {
    ticker: String,
    event: usize,
    open: i64,
    close: i64,
    /// The close first announced, for the few markets whose close date moves.
    announced_close: Option<i64>,
    floor: i64,
    cap: Option<i64>,
    title: String,
    yes_sub_title: String,
    no_sub_title: String,
    rules: String,
    initial_price: i64,
    settlement: Option<Settlement>,
    trades: u64,
}

struct Settlement {
    result: i16,
    value: i64,
    determined: i64,
    settled: i64,
}

impl Plan {
    fn new(spec: &DatasetSpec) -> Self {
        let mut rng = stream(spec.seed, 0);
        let days = i64::from(spec.days);
        let start = spec.start.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_micros();
        let end = start + days * DAY;
        let series_count = (spec.markets / 20).max(1) as usize;
        // About three strikes per event, at most one event per series and day.
        let event_count = ((spec.markets / 3) as usize).clamp(1, series_count * spec.days as usize);

        let width = (1..).find(|&w| 26usize.pow(w) >= series_count).unwrap_or(1).max(2);
        let mut series_steps = Vec::with_capacity(series_count);
        let series = (0..series_count)
            .map(|index| {
                let (category, topic) = *CATEGORIES.choose(&mut rng).unwrap_or(&CATEGORIES[0]);
                let code = letters(index, width);
                let step = *[250, 500, 1_000, 2_500, 5_000, 10_000].choose(&mut rng).unwrap_or(&1_000);
                let base = step * rng.random_range(200..=2_000);
                series_steps.push((step, base, rng.random_bool(0.5)));
                Series {
                    ticker: format!("KXSYN{code}"),
                    title: format!("Synthetic {topic} index {code}"),
                    category,
                    tags: vec![topic.to_owned(), "Synthetic".to_owned()],
                }
            })
            .collect::<Vec<_>>();

        let mut events = Vec::with_capacity(event_count);
        let mut markets = Vec::with_capacity(spec.markets as usize);
        for index in 0..event_count {
            let s = index % series_count;
            let (step, base, between) = series_steps[s];
            let per_series = event_count / series_count + usize::from(s < event_count % series_count);
            // Injective because per_series <= days: one event per series and day, hence unique tickers.
            let day = (index / series_count) as i64 * days / per_series as i64;
            let nominal = start + day * DAY + rng.random_range(14..=23) * HOUR;
            // Some events close after the range (by a whole range, so dates never collide) and stay active.
            let close = if rng.random_bool(0.15) { nominal + days * DAY } else { nominal };
            let open = (nominal - rng.random_range(6 * 60..=96 * 60) * MINUTE).max(start);
            let until = close.min(end);
            let sync = (0..1 + (until - open) / (6 * HOUR))
                .map(|_| open + rng.random_range(0..(until - open) / SECOND) * SECOND)
                .collect();
            let close_date = at(close);
            let ticker = format!("{}-{}", series[s].ticker, close_date.format("%y%b%d")).to_uppercase();
            events.push(Event {
                ticker,
                series: s,
                title: format!("{} on {}", series[s].title, close_date.format("%b %-d, %Y")),
                sub_title: format!("On {}", close_date.format("%b %-d, %Y")),
                category: series[s].category,
                between,
                open,
                close,
                sync,
            });

            let strikes =
                spec.markets as usize / event_count + usize::from(index < spec.markets as usize % event_count);
            let center = base + step * rng.random_range(-10..=10);
            let reach = (strikes as i64 / 2 + 1) * step;
            let ladder = Ladder { step, center, outcome: center + rng.random_range(-reach..=reach) };
            for k in 0..strikes {
                let floor = center + (k as i64 - strikes as i64 / 2) * step;
                markets.push(Market::new(&mut rng, index, &events[index], &series[s], &ladder, floor, end));
            }
        }
        assign_trades(&mut rng, &mut markets, spec.trades);
        Plan { seed: spec.seed, start, end, updated_at: at(end + DAY), series, events, markets }
    }
}

/// An event's strikes, `step` apart around the consensus `center`; `outcome` is where the underlying ends up.
#[derive(Clone, Copy)]
struct Ladder {
    step: i64,
    center: i64,
    outcome: i64,
}

impl Market {
    fn new(
        rng: &mut ChaCha8Rng,
        event_index: usize,
        event: &Event,
        series: &Series,
        ladder: &Ladder,
        floor: i64,
        end: i64,
    ) -> Self {
        let Ladder { step, center, outcome } = *ladder;
        let floor_text = decimal(floor);
        let (ticker, cap, title, yes_sub, no_sub, yes, initial) = if event.between {
            let cap = floor + step;
            let mid = floor + step / 2;
            // Buckets near the consensus are the likely ones; the ladder's probabilities need not sum to one.
            let initial = 300_000 - (center - mid).abs() * 100_000 / step;
            let cap_text = decimal(cap);
            let range = format!("{floor_text} to {cap_text}");
            (
                format!("{}-B{}", event.ticker, decimal(mid)),
                Some(cap),
                format!("Will {} be between {floor_text} and {cap_text}?", series.title),
                range.clone(),
                format!("Not {range}"),
                (floor..cap).contains(&outcome),
                initial,
            )
        } else {
            let initial = 500_000 + (center - floor) * 150_000 / step;
            (
                format!("{}-T{floor_text}", event.ticker),
                None,
                format!("Will {} be above {floor_text}?", series.title),
                format!("Above {floor_text}"),
                format!("{floor_text} or below"),
                outcome > floor,
                initial,
            )
        };
        let close = event.close;
        let settlement = (close < end).then(|| {
            let determined = close + rng.random_range(5..=90) * MINUTE;
            let (result, value) = if rng.random_bool(0.03) {
                (RESULT_VOID, DOLLAR / 2)
            } else if yes {
                (RESULT_YES, DOLLAR)
            } else {
                (RESULT_NO, 0)
            };
            Settlement { result, value, determined, settled: determined + rng.random_range(1..=180) * MINUTE }
        });
        let announced_close = rng.random_bool(0.05).then(|| close + rng.random_range(1..=48) * HOUR);
        Market {
            rules: format!(
                "If the {} value is {} on {}, then the market resolves to Yes.",
                series.title,
                yes_sub.to_lowercase(),
                at(close).format("%b %-d, %Y at %H:%M UTC")
            ),
            ticker,
            event: event_index,
            open: event.open,
            close,
            announced_close,
            floor,
            cap,
            title,
            yes_sub_title: yes_sub,
            no_sub_title: no_sub,
            initial_price: round_cent(initial.clamp(3 * CENT, DOLLAR - 3 * CENT)),
            settlement,
            trades: 0,
        }
    }
}

/// Spreads exactly `trades` trades over the markets with Zipf-skewed activity: a few markets get most of the
/// flow, as on the exchange. The ranks map to markets through a seeded shuffle so that activity is not tied to
/// ticker order. Zipf sampling goes through the platform's `powf`/`ln`, so the counts are reproducible on one
/// platform; another libm could in principle round one draw differently.
fn assign_trades(rng: &mut ChaCha8Rng, markets: &mut [Market], trades: u64) {
    let mut order = (0..markets.len()).collect::<Vec<_>>();
    order.shuffle(rng);
    let zipf = Zipf::new(markets.len() as f64, 1.1).expect("at least one market and s > 0");
    let mut counts = vec![0u64; markets.len()];
    for _ in 0..trades {
        let rank = (zipf.sample(rng) as usize).clamp(1, markets.len()) - 1;
        counts[rank] += 1;
    }
    for (rank, count) in counts.into_iter().enumerate() {
        markets[order[rank]].trades = count;
    }
}

/// Stream 0 plans; market `m` trades on stream 2m+1 and books on stream 2m+2.
fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Microseconds since the Unix epoch as a timestamptz value.
fn at(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).expect("generated times stay within chrono's range")
}

fn letters(mut index: usize, width: u32) -> String {
    let mut out = vec![b'A'; width as usize];
    for slot in out.iter_mut().rev() {
        *slot = b'A' + (index % 26) as u8;
        index /= 26;
    }
    out.into_iter().map(char::from).collect()
}

/// A strike in thousandths as Kalshi prints it: no trailing zeros ("123.5", "100").
fn decimal(thousandths: i64) -> String {
    let unit = 10i64.pow(STRIKE_SCALE);
    let (whole, frac) = (thousandths / unit, (thousandths % unit).abs());
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{}{whole}.{}", if thousandths < 0 && whole == 0 { "-" } else { "" }, frac.trim_end_matches('0'))
}

fn round_cent(micros: i64) -> i64 {
    micros / CENT * CENT
}

/// A strike of `thousandths / 1000` as an exact decimal, trailing zeros trimmed so it prints as the ticker does.
fn strike(thousandths: i64) -> Decimal {
    Decimal::new(thousandths, STRIKE_SCALE).normalize()
}

/// Formats 128 random bits as a version-4 UUID, the shape of Kalshi's trade ids.
fn format_uuid(out: &mut String, bits: u128) {
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    out.clear();
    let _ = write!(
        out,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (bits >> 96) as u32,
        (bits >> 80) as u16,
        (bits >> 64) as u16,
        (bits >> 48) as u16,
        bits & 0xffff_ffff_ffff
    );
}

/// One trade of a market's walk. `walk_price` is the whole-cent level the walk sits at; `yes_price` occasionally
/// differs from it by a sub-cent amount, as fills at 6-decimal prices do.
struct Trade {
    ts: i64,
    id: u128,
    yes_price: i64,
    walk_price: i64,
    count: i64,
    taker: i16,
}

/// A market's trades in time order: an integer random walk that drifts toward the settlement value as the close
/// nears. Holds the market's trade times (8 bytes a trade) and nothing else.
struct TradeWalk {
    rng: ChaCha8Rng,
    times: std::vec::IntoIter<i64>,
    open: i64,
    until: i64,
    price: i64,
    target: i64,
}

impl TradeWalk {
    fn new(plan: &Plan, index: usize) -> Self {
        let market = &plan.markets[index];
        let event = &plan.events[market.event];
        let mut rng = stream(plan.seed, 2 * index as u64 + 1);
        let until = market.close.min(plan.end);
        let n = market.trades as usize;
        let synced = if n >= 2 { (n / 100).max(1) } else { 0 };
        let mut times = Vec::with_capacity(n);
        for _ in 0..synced {
            times.push(*event.sync.choose(&mut rng).unwrap_or(&market.open));
        }
        for _ in synced..n {
            times.push(rng.random_range(market.open..until));
        }
        times.sort_unstable();
        // A taker order that sweeps several resting orders prints several trades at one instant.
        for i in 1..n {
            if rng.random_bool(0.04) {
                times[i] = times[i - 1];
            }
        }
        let target = match &market.settlement {
            Some(s) if s.result == RESULT_YES => MAX_WALK,
            Some(s) if s.result == RESULT_NO => MIN_WALK,
            _ => market.initial_price,
        };
        TradeWalk { rng, times: times.into_iter(), open: market.open, until, price: market.initial_price, target }
    }
}

impl Iterator for TradeWalk {
    type Item = Trade;

    fn next(&mut self) -> Option<Trade> {
        let ts = self.times.next()?;
        let rng = &mut self.rng;
        let step = match rng.random_range(0..100) {
            0..12 => 0,
            12..82 => CENT,
            82..92 => 2 * CENT,
            _ => rng.random_range(3..=5) * CENT,
        };
        let progress = (ts - self.open) as f64 / (self.until - self.open) as f64;
        let up = if self.target == self.price {
            rng.random_bool(0.5)
        } else {
            rng.random_bool(0.5 + 0.3 * progress) == (self.target > self.price)
        };
        self.price = (if up { self.price + step } else { self.price - step }).clamp(MIN_WALK, MAX_WALK);
        let yes_price = if rng.random_bool(0.05) {
            (self.price + rng.random_range(-9..=9) * 1_000).clamp(1_000, DOLLAR - 1_000)
        } else {
            self.price
        };
        let count = if rng.random_bool(0.08) {
            // Fractional contracts: anything but a whole number.
            let centi = rng.random_range(1..10_000);
            if centi % 100 == 0 { centi + 1 } else { centi }
        } else {
            100 * match rng.random_range(0..100) {
                0..40 => rng.random_range(1..=5),
                40..70 => rng.random_range(6..=20),
                70..88 => rng.random_range(21..=100),
                88..97 => rng.random_range(101..=500),
                _ => rng.random_range(501..=5_000),
            }
        };
        let taker = if rng.random_bool(0.7) == up { YES } else { NO };
        Some(Trade { ts, id: rng.random(), yes_price, walk_price: self.price, count, taker })
    }
}

enum BookRow {
    Snapshot { ts: i64, seq: i64, yes: (Vec<i64>, Vec<i64>), no: (Vec<i64>, Vec<i64>) },
    Delta { ts: i64, seq: i64, side: i16, price: i64, delta: i64 },
}

/// A market's order book, driven by its trade walk: a snapshot at the open and every 24 hours after, and in
/// between deltas from takers eating the best bid, makers joining near the price (cancelling whatever would cross
/// the book) and makers pulling size. Replaying the deltas on a snapshot gives the next snapshot exactly.
struct BookSim {
    walk: TradeWalk,
    rng: ChaCha8Rng,
    yes: BTreeMap<i64, i64>,
    no: BTreeMap<i64, i64>,
    seq: i64,
    next_snapshot: i64,
    until: i64,
    pending: VecDeque<BookRow>,
}

impl BookSim {
    fn new(plan: &Plan, index: usize) -> Self {
        let market = &plan.markets[index];
        let mut rng = stream(plan.seed, 2 * index as u64 + 2);
        let mut yes = BTreeMap::new();
        let mut no = BTreeMap::new();
        for (book, top) in [(&mut yes, market.initial_price), (&mut no, DOLLAR - market.initial_price)] {
            for k in 1..=rng.random_range(3..=8) {
                let price = top - k * CENT;
                if price > 0 {
                    book.insert(price, 100 * rng.random_range(1..=500));
                }
            }
        }
        let mut sim = BookSim {
            walk: TradeWalk::new(plan, index),
            rng,
            yes,
            no,
            seq: 0,
            next_snapshot: market.open + DAY,
            until: market.close.min(plan.end),
            pending: VecDeque::new(),
        };
        sim.snapshot(market.open);
        sim
    }

    fn snapshot(&mut self, ts: i64) {
        self.seq += 1;
        let levels = |book: &BTreeMap<i64, i64>| (book.keys().copied().collect(), book.values().copied().collect());
        self.pending.push_back(BookRow::Snapshot { ts, seq: self.seq, yes: levels(&self.yes), no: levels(&self.no) });
    }

    fn change(&mut self, ts: i64, side: i16, price: i64, delta: i64) {
        let book = if side == YES { &mut self.yes } else { &mut self.no };
        let size = book.entry(price).or_insert(0);
        *size += delta;
        debug_assert!(*size >= 0, "a delta drove a level below zero");
        if *size == 0 {
            book.remove(&price);
        }
        self.seq += 1;
        self.pending.push_back(BookRow::Delta { ts, seq: self.seq, side, price, delta });
    }

    fn on_trade(&mut self, trade: &Trade) {
        let ts = trade.ts;
        if self.rng.random_bool(0.25) {
            let (side, book) = if trade.taker == YES { (NO, &self.no) } else { (YES, &self.yes) };
            if let Some((&price, &size)) = book.last_key_value() {
                self.change(ts, side, price, -trade.count.min(size));
            }
        }
        if self.rng.random_bool(0.3) {
            let side = if self.rng.random_bool(0.5) { YES } else { NO };
            let top = if side == YES { trade.walk_price } else { DOLLAR - trade.walk_price };
            let price = top - self.rng.random_range(1..=4) * CENT;
            if price > 0 {
                let (other, book) = if side == YES { (NO, &self.no) } else { (YES, &self.yes) };
                let crossing = book.range(DOLLAR - price..).map(|(&p, &s)| (p, s)).collect::<Vec<_>>();
                for (p, s) in crossing {
                    self.change(ts, other, p, -s);
                }
                let size = 100 * self.rng.random_range(1..=200);
                self.change(ts, side, price, size);
            }
        }
        if self.rng.random_bool(0.05) {
            let side = if self.rng.random_bool(0.5) { YES } else { NO };
            let book = if side == YES { &self.yes } else { &self.no };
            if !book.is_empty() {
                let nth = self.rng.random_range(0..book.len() as u64) as usize;
                if let Some((&price, &size)) = book.iter().nth(nth) {
                    let pulled = self.rng.random_range(1..=size);
                    self.change(ts, side, price, -pulled);
                }
            }
        }
    }
}

impl Iterator for BookSim {
    type Item = BookRow;

    fn next(&mut self) -> Option<BookRow> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(row);
            }
            match self.walk.next() {
                Some(trade) => {
                    while self.next_snapshot <= trade.ts {
                        self.snapshot(self.next_snapshot);
                        self.next_snapshot += DAY;
                    }
                    self.on_trade(&trade);
                }
                None if self.next_snapshot < self.until => {
                    self.snapshot(self.next_snapshot);
                    self.next_snapshot += DAY;
                }
                None => return None,
            }
        }
    }
}

async fn copy_series(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql = "COPY series (ticker, title, category, tags, frequency, fee_type, updated_at) FROM STDIN (FORMAT binary)";
    let types = [Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT_ARRAY, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for s in &plan.series {
        writer
            .as_mut()
            .write(&[&s.ticker, &s.title, &s.category, &s.tags, &"daily", &"quadratic", &plan.updated_at])
            .await?;
    }
    writer.finish().await
}

async fn copy_events(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql = "COPY events (event_ticker, series_ticker, title, sub_title, category, mutually_exclusive, \
               strike_date, updated_at) FROM STDIN (FORMAT binary)";
    let types =
        [Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT, Type::BOOL, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for e in &plan.events {
        let series = &plan.series[e.series].ticker;
        let row: [&(dyn ToSql + Sync); 8] =
            [&e.ticker, series, &e.title, &e.sub_title, &e.category, &e.between, &at(e.close), &plan.updated_at];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

async fn copy_markets(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql = "COPY markets (ticker, event_ticker, series_ticker, market_type, title, yes_sub_title, no_sub_title, \
               status, open_time, close_time, expected_expiration_time, latest_expiration_time, \
               settlement_timer_seconds, can_close_early, strike_type, floor_strike, cap_strike, rules_primary, \
               updated_at) FROM STDIN (FORMAT binary)";
    let (text, ts) = (Type::TEXT, Type::TIMESTAMPTZ);
    #[rustfmt::skip]
    let types = [
        text.clone(), text.clone(), text.clone(), Type::INT2, text.clone(), text.clone(), text.clone(), Type::INT2,
        ts.clone(), ts.clone(), ts.clone(), ts.clone(), Type::INT4, Type::BOOL, text.clone(), Type::NUMERIC, Type::NUMERIC,
        text, ts,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for m in &plan.markets {
        let event = &plan.events[m.event];
        let status = if m.settlement.is_some() { STATUS_FINALIZED } else { STATUS_ACTIVE };
        let strike_type = if event.between { "between" } else { "greater" };
        let row: [&(dyn ToSql + Sync); 19] = [
            &m.ticker,
            &event.ticker,
            &plan.series[event.series].ticker,
            &MARKET_BINARY,
            &m.title,
            &m.yes_sub_title,
            &m.no_sub_title,
            &status,
            &at(m.open),
            &at(m.close),
            &at(m.close + HOUR),
            &at(m.close + 7 * DAY),
            &1_800i32,
            &false,
            &strike_type,
            &strike(m.floor),
            &m.cap.map(strike),
            &m.rules,
            &plan.updated_at,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

async fn copy_settlements(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql = "COPY settlements (market_ticker, event_ticker, series_ticker, result, settlement_value_micros, \
               determined_time, settled_time, updated_at) FROM STDIN (FORMAT binary)";
    let ts = Type::TIMESTAMPTZ;
    let types = [Type::TEXT, Type::TEXT, Type::TEXT, Type::INT2, Type::INT8, ts.clone(), ts.clone(), ts];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for m in &plan.markets {
        let Some(s) = &m.settlement else { continue };
        let event = &plan.events[m.event];
        let row: [&(dyn ToSql + Sync); 8] = [
            &m.ticker,
            &event.ticker,
            &plan.series[event.series].ticker,
            &s.result,
            &s.value,
            &at(s.determined),
            &at(s.settled),
            &plan.updated_at,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

/// One market_lifecycle row; the fields an event type does not carry stay NULL.
#[derive(Default)]
struct Lifecycle {
    ts: i64,
    event_type: i16,
    open_time: Option<DateTime<Utc>>,
    close_time: Option<DateTime<Utc>>,
    result: Option<i16>,
    value: Option<i64>,
    determined_time: Option<DateTime<Utc>>,
    settled_time: Option<DateTime<Utc>>,
}

/// A market's lifecycle. Only events inside the range are kept, like every fact table: a market settled after the
/// range end keeps its settlements row but has no `settled` event yet.
fn lifecycle(plan: &Plan, m: &Market) -> Vec<Lifecycle> {
    let mut rows = vec![
        Lifecycle {
            ts: m.open,
            event_type: LC_CREATED,
            open_time: Some(at(m.open)),
            close_time: Some(at(m.announced_close.unwrap_or(m.close))),
            ..Lifecycle::default()
        },
        Lifecycle { ts: m.open, event_type: LC_ACTIVATED, ..Lifecycle::default() },
    ];
    if m.announced_close.is_some() {
        let midway = m.open + (m.close.min(plan.end) - m.open) / 2;
        rows.push(Lifecycle {
            ts: midway / SECOND * SECOND,
            event_type: LC_CLOSE_DATE_UPDATED,
            close_time: Some(at(m.close)),
            ..Lifecycle::default()
        });
    }
    if let Some(s) = &m.settlement {
        rows.push(Lifecycle {
            ts: s.determined,
            event_type: LC_DETERMINED,
            result: Some(s.result),
            value: Some(s.value),
            determined_time: Some(at(s.determined)),
            ..Lifecycle::default()
        });
        rows.push(Lifecycle {
            ts: s.settled,
            event_type: LC_SETTLED,
            settled_time: Some(at(s.settled)),
            ..Lifecycle::default()
        });
    }
    rows.retain(|row| row.ts < plan.end);
    rows
}

async fn copy_lifecycle(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql = "COPY market_lifecycle (ts, ticker, event_type, open_time, close_time, result, \
               settlement_value_micros, determined_time, settled_time) FROM STDIN (FORMAT binary)";
    let ts = Type::TIMESTAMPTZ;
    let types = [ts.clone(), Type::TEXT, Type::INT2, ts.clone(), ts.clone(), Type::INT2, Type::INT8, ts.clone(), ts];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for m in &plan.markets {
        for l in lifecycle(plan, m) {
            let row: [&(dyn ToSql + Sync); 9] = [
                &at(l.ts),
                &m.ticker,
                &l.event_type,
                &l.open_time,
                &l.close_time,
                &l.result,
                &l.value,
                &l.determined_time,
                &l.settled_time,
            ];
            writer.as_mut().write(&row).await?;
        }
    }
    writer.finish().await
}

async fn copy_trades(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql =
        "COPY trades (ts, ticker, trade_id, yes_price_micros, count_centi, taker_side) FROM STDIN (FORMAT binary)";
    let types = [Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::INT2];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    let mut id = String::with_capacity(36);
    for (index, market) in plan.markets.iter().enumerate() {
        for trade in TradeWalk::new(plan, index) {
            format_uuid(&mut id, trade.id);
            let row: [&(dyn ToSql + Sync); 6] =
                [&at(trade.ts), &market.ticker, &id, &trade.yes_price, &trade.count, &trade.taker];
            writer.as_mut().write(&row).await?;
        }
    }
    writer.finish().await
}

async fn copy_deltas(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql =
        "COPY orderbook_deltas (ts, ticker, sid, seq, side, price_micros, delta_centi) FROM STDIN (FORMAT binary)";
    let types = [Type::TIMESTAMPTZ, Type::TEXT, Type::INT8, Type::INT8, Type::INT2, Type::INT8, Type::INT8];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for (index, market) in plan.markets.iter().enumerate() {
        let sid = index as i64 + 1;
        for row in BookSim::new(plan, index) {
            if let BookRow::Delta { ts, seq, side, price, delta } = row {
                let row: [&(dyn ToSql + Sync); 7] = [&at(ts), &market.ticker, &sid, &seq, &side, &price, &delta];
                writer.as_mut().write(&row).await?;
            }
        }
    }
    writer.finish().await
}

async fn copy_snapshots(tx: &Transaction<'_>, plan: &Plan) -> Result<u64, Error> {
    let sql = "COPY orderbook_snapshots (ts, ticker, sid, seq, yes_price_micros, yes_size_centi, no_price_micros, \
               no_size_centi) FROM STDIN (FORMAT binary)";
    let array = Type::INT8_ARRAY;
    let types =
        [Type::TIMESTAMPTZ, Type::TEXT, Type::INT8, Type::INT8, array.clone(), array.clone(), array.clone(), array];
    let mut writer = pin!(BinaryCopyInWriter::new(tx.copy_in(sql).await?, &types));
    for (index, market) in plan.markets.iter().enumerate() {
        let sid = index as i64 + 1;
        for row in BookSim::new(plan, index) {
            if let BookRow::Snapshot { ts, seq, yes, no } = row {
                let row: [&(dyn ToSql + Sync); 8] = [&at(ts), &market.ticker, &sid, &seq, &yes.0, &yes.1, &no.0, &no.1];
                writer.as_mut().write(&row).await?;
            }
        }
    }
    writer.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_are_exact_and_trimmed() {
        assert_eq!(strike(123_500).to_string(), "123.5");
        assert_eq!(strike(10_000_000).to_string(), "10000");
        assert_eq!(strike(12_345_678).to_string(), "12345.678");
    }

    #[test]
    fn strikes_print_like_tickers() {
        assert_eq!(decimal(123_500), "123.5");
        assert_eq!(decimal(100_000), "100");
        assert_eq!(decimal(730_750), "730.75");
        assert_eq!(decimal(1_125), "1.125");
    }

    #[test]
    fn trade_ids_are_v4_uuids() {
        let mut id = String::new();
        format_uuid(&mut id, u128::MAX);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        format_uuid(&mut id, 0);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }
}
