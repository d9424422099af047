//! The cache of reference lookups by key (GetSeries, GetEvent, GetMarket, GetSettlement) and of each market's
//! coverage days (GetCoverage), kept coherent with the database by LISTEN/NOTIFY.
//!
//! A lookup by key is the hottest call of a backtest's set-up and its rows change rarely, yet on 2 cores the
//! database round trip costs several times the gRPC call itself; GetCoverage for a hundred markets costs the
//! database tens of times more. Every statement that writes series, events, markets or settlements notifies
//! [`CHANNEL`] (migrations/0004), and every statement that changes `coverage_daily` (each write of trades,
//! deltas or snapshots) notifies [`COVERAGE_CHANNEL`] (migrations/0005), whoever the writer is. The listener
//! holds its own connection. A reference notification bumps the generation and empties every shelf (coverage
//! too: its entries stand for markets that exist); a coverage notification bumps the data generation and
//! empties the coverage shelf only, so a stream of fact writes leaves lookups by key cached.
//!
//! Coherence: a lookup that misses takes the generations before it reads the database and stores its answer
//! only if they are unchanged afterwards. An answer read before a commit whose notification came in meanwhile
//! is never stored; one stored before that notification arrived is emptied by it. So an entry outlives its
//! row's change by the notification's delivery at most (well under a millisecond on one machine). While the
//! listener is not listening (starting, or its connection was lost and it reconnects), nothing is stored and
//! nothing is served: every lookup reads the database.

use chrono::{DateTime, NaiveDate, Utc};
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    proto::{GetEventResponse, Market, Series, Settlement},
    store::db::Pool,
};

/// One day of a market in `coverage_daily`, as the coverage shelf keeps it (see [`super::coverage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub(crate) day: NaiveDate,
    pub(crate) trades: i64,
    pub(crate) deltas: i64,
    pub(crate) snapshots: i64,
    pub(crate) first_trade: Option<DateTime<Utc>>,
    pub(crate) last_trade: Option<DateTime<Utc>>,
}

/// The notification channel of reference writes (migrations/0004_reference_notify.sql).
pub const CHANNEL: &str = "kalshi_replay_reference";
/// The notification channel of coverage writes (migrations/0005_coverage_notify.sql).
pub const COVERAGE_CHANNEL: &str = "kalshi_replay_coverage";
/// The listener's application_name, which tells it apart from the pool's connections in pg_stat_activity.
pub const LISTENER_NAME: &str = "kalshi-replay cache listener";
/// Most entries of each kind of lookup by key; a full shelf starts afresh rather than tracking recency on every
/// hit.
const SHELF_CAPACITY: usize = 20_000;
/// Most market-days the coverage shelf holds, all markets together: about 64 bytes each, so some 32 MB, e.g.
/// 1,400 markets over a year or 70,000 markets over a week.
const COVERAGE_CAPACITY: usize = 500_000;
/// How long the listener waits before it reconnects after losing its connection.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// The cached lookups, shared by the service and its listener.
#[derive(Debug, Clone, Default)]
pub struct ReferenceCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Odd while listening: every change of the listener's state and every reference notification adds one or
    /// two, so a ticket taken while listening is invalid after any of them.
    generation: AtomicU64,
    /// One more with every coverage notification.
    data_generation: AtomicU64,
    series: Shelf<String, Series>,
    events: Shelf<(String, bool), GetEventResponse>,
    markets: Shelf<String, Market>,
    settlements: Shelf<String, Settlement>,
    /// Each market's days with data, ascending (all of them: a request's range is cut out on the way out).
    coverage: Shelf<String, Arc<[Day]>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            data_generation: AtomicU64::new(0),
            series: Shelf::counted(),
            events: Shelf::counted(),
            markets: Shelf::counted(),
            settlements: Shelf::counted(),
            coverage: Shelf {
                entries: Mutex::default(),
                follows_data: true,
                capacity: COVERAGE_CAPACITY,
                weight: |days| days.len(),
            },
        }
    }
}

/// The generations a lookup saw before reading the database; None while the cache is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
    data_generation: u64,
}

impl ReferenceCache {
    /// A ticket for a lookup, or None while the listener is not listening (then nothing may be stored).
    pub fn ticket(&self) -> Option<Ticket> {
        let data_generation = self.inner.data_generation.load(Ordering::Acquire);
        let generation = self.inner.generation.load(Ordering::Acquire);
        (generation % 2 == 1).then_some(Ticket { generation, data_generation })
    }

    /// Whether `ticket` is still current for a shelf: no reference notification, no change of the listener and,
    /// for a shelf that `follows_data`, no coverage notification since it was taken.
    fn current(&self, ticket: Ticket, follows_data: bool) -> bool {
        self.inner.generation.load(Ordering::Acquire) == ticket.generation
            && (!follows_data || self.inner.data_generation.load(Ordering::Acquire) == ticket.data_generation)
    }

    pub fn series(&self) -> View<'_, String, Series> {
        View { cache: self, shelf: &self.inner.series }
    }

    pub fn events(&self) -> View<'_, (String, bool), GetEventResponse> {
        View { cache: self, shelf: &self.inner.events }
    }

    pub fn markets(&self) -> View<'_, String, Market> {
        View { cache: self, shelf: &self.inner.markets }
    }

    pub fn settlements(&self) -> View<'_, String, Settlement> {
        View { cache: self, shelf: &self.inner.settlements }
    }

    pub fn coverage(&self) -> View<'_, String, Arc<[Day]>> {
        View { cache: self, shelf: &self.inner.coverage }
    }

    /// Moves to the next generation (from listening to listening, or between listening and not) and empties
    /// every shelf.
    fn advance(&self, listening: bool) {
        let inner = &*self.inner;
        let mut current = inner.generation.load(Ordering::Acquire);
        loop {
            // the next number of the wanted parity
            let next = if (current + 1) % 2 == u64::from(listening) { current + 1 } else { current + 2 };
            match inner.generation.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        inner.series.clear();
        inner.events.clear();
        inner.markets.clear();
        inner.settlements.clear();
        inner.coverage.clear();
    }

    /// Moves to the next data generation and empties the coverage shelf.
    fn advance_data(&self) {
        self.inner.data_generation.fetch_add(1, Ordering::AcqRel);
        self.inner.coverage.clear();
    }

    /// Listens for reference and coverage writes on a connection of its own until dropped, reconnecting when the connection
    /// is lost. The cache serves only while it listens.
    pub async fn listen(self, pool: Pool) {
        loop {
            match self.listen_once(&pool).await {
                Ok(()) => tracing::warn!("reference cache listener lost its connection; cache off"),
                Err(e) => tracing::warn!(error = %e, "reference cache listener cannot listen; cache off"),
            }
            self.advance(false);
            tokio::time::sleep(RECONNECT_INTERVAL).await;
        }
    }

    /// One connection's life: LISTEN, then new generations as notifications come, until the connection closes.
    async fn listen_once(&self, pool: &Pool) -> Result<(), tokio_postgres::Error> {
        let mut conn = pool.dedicated_connection().await?;
        let notified = conn.take_notifications().expect("a new connection has its notifications");
        conn.batch_execute(&format!(
            "SET application_name = '{LISTENER_NAME}'; LISTEN {CHANNEL}; LISTEN {COVERAGE_CHANNEL}"
        ))
        .await?;
        // from here on every write is notified to this connection: the cache may serve
        self.advance(true);
        tracing::debug!("reference cache listening");
        while let Some(channels) = notified.recv().await {
            if channels.contains(CHANNEL) {
                self.advance(true);
            } else if channels.contains(COVERAGE_CHANNEL) {
                self.advance_data();
            }
        }
        Ok(())
    }
}

/// One kind of cached answer: its shelf and the cache's generation.
#[derive(Debug)]
pub struct View<'a, K, V> {
    cache: &'a ReferenceCache,
    shelf: &'a Shelf<K, V>,
}

impl<K: Hash + Eq, V: Clone> View<'_, K, V> {
    /// The cached answer for `key`, while the cache is on.
    pub fn get(&self, key: &K) -> Option<V> {
        self.cache.ticket()?;
        self.shelf.entries.lock().unwrap_or_else(PoisonError::into_inner).map.get(key).cloned()
    }

    /// The cached answer for `key`, or `fetch`'s (stored under a ticket taken before `fetch` starts). An error
    /// is passed on and not stored.
    pub async fn through<E>(&self, key: K, fetch: impl Future<Output = Result<V, E>>) -> Result<V, E> {
        if let Some(hit) = self.get(&key) {
            return Ok(hit);
        }
        let ticket = self.cache.ticket();
        let value = fetch.await?;
        self.put(ticket, key, value.clone());
        Ok(value)
    }

    /// Stores an answer read from the database after `ticket` was taken, unless the ticket went stale meanwhile.
    pub fn put(&self, ticket: Option<Ticket>, key: K, value: V) {
        let Some(ticket) = ticket else { return };
        let shelf = self.shelf;
        let weight = (shelf.weight)(&value);
        if weight > shelf.capacity {
            return;
        }
        let mut entries = shelf.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // checked under the shelf's lock: `advance` bumps the generation before it empties the shelf, so an
        // answer stored after the check is emptied by the clear that follows the bump
        if !self.cache.current(ticket, shelf.follows_data) {
            return;
        }
        if let Some(old) = entries.map.remove(&key) {
            entries.held -= (shelf.weight)(&old);
        }
        if entries.held + weight > shelf.capacity {
            entries.clear();
        }
        entries.held += weight;
        entries.map.insert(key, value);
    }
}

/// One kind of answer, at most `capacity` in weight.
#[derive(Debug)]
struct Shelf<K, V> {
    entries: Mutex<Entries<K, V>>,
    /// Whether coverage notifications empty it.
    follows_data: bool,
    capacity: usize,
    /// What an entry counts against the capacity.
    weight: fn(&V) -> usize,
}

#[derive(Debug)]
struct Entries<K, V> {
    map: HashMap<K, V>,
    /// The weights of the entries in `map`, summed.
    held: usize,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Self { map: HashMap::new(), held: 0 }
    }
}

impl<K, V> Entries<K, V> {
    fn clear(&mut self) {
        self.map.clear();
        self.held = 0;
    }
}

impl<K, V> Shelf<K, V> {
    /// A shelf of lookups by key, each entry counting one.
    fn counted() -> Self {
        Self { entries: Mutex::default(), follows_data: false, capacity: SHELF_CAPACITY, weight: |_| 1 }
    }

    fn clear(&self) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(title: &str) -> Market {
        Market { ticker: "M".to_owned(), title: title.to_owned(), ..Default::default() }
    }

    #[test]
    fn nothing_is_stored_or_served_while_not_listening() {
        let cache = ReferenceCache::default();
        assert_eq!(cache.ticket(), None);
        cache.markets().put(cache.ticket(), "M".to_owned(), market("a"));
        cache.advance(true);
        assert_eq!(cache.markets().get(&"M".to_owned()), None, "not stored before listening");
        cache.markets().put(cache.ticket(), "M".to_owned(), market("a"));
        assert_eq!(cache.markets().get(&"M".to_owned()), Some(market("a")));
        cache.advance(false);
        assert_eq!(cache.ticket(), None);
        assert_eq!(cache.markets().get(&"M".to_owned()), None, "not served after the listener was lost");
    }

    #[test]
    fn an_answer_read_across_a_notification_is_not_stored() {
        let cache = ReferenceCache::default();
        cache.advance(true);
        let before = cache.ticket();
        // a notification arrives while the lookup reads the database
        cache.advance(true);
        cache.markets().put(before, "M".to_owned(), market("stale"));
        assert_eq!(cache.markets().get(&"M".to_owned()), None);
        // a lost and regained listener invalidates older tickets too
        let before = cache.ticket();
        cache.advance(false);
        cache.advance(true);
        cache.markets().put(before, "M".to_owned(), market("stale"));
        assert_eq!(cache.markets().get(&"M".to_owned()), None);
        let fresh = cache.ticket();
        cache.markets().put(fresh, "M".to_owned(), market("fresh"));
        assert_eq!(cache.markets().get(&"M".to_owned()), Some(market("fresh")));
        cache.advance(true);
        assert_eq!(cache.markets().get(&"M".to_owned()), None, "a notification empties the shelves");
    }

    fn days(n: u32) -> Arc<[Day]> {
        let bare = |d| Day {
            day: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date") + chrono::Days::new(d),
            trades: 1,
            deltas: 0,
            snapshots: 0,
            first_trade: None,
            last_trade: None,
        };
        (0..u64::from(n)).map(bare).collect()
    }

    #[test]
    fn a_coverage_notification_empties_coverage_only_and_a_reference_one_everything() {
        let cache = ReferenceCache::default();
        cache.advance(true);
        let key = || "M".to_owned();
        let fill = |cache: &ReferenceCache| {
            cache.markets().put(cache.ticket(), key(), market("a"));
            cache.coverage().put(cache.ticket(), key(), days(3));
        };
        fill(&cache);
        assert_eq!(cache.coverage().get(&key()).as_deref().map(<[Day]>::len), Some(3));
        // coverage read across a fact write is not stored; a lookup by key read meanwhile is
        let before = cache.ticket();
        cache.advance_data();
        assert_eq!(cache.coverage().get(&key()), None, "a coverage notification empties the coverage shelf");
        assert_eq!(cache.markets().get(&key()), Some(market("a")), "and leaves lookups by key alone");
        cache.coverage().put(before, key(), days(3));
        assert_eq!(cache.coverage().get(&key()), None, "stale coverage is not stored");
        cache.markets().put(before, "N".to_owned(), market("b"));
        assert_eq!(cache.markets().get(&"N".to_owned()), Some(market("b")));
        // a reference write empties coverage too (its entries stand for markets that exist)
        fill(&cache);
        let before = cache.ticket();
        cache.advance(true);
        assert_eq!((cache.coverage().get(&key()), cache.markets().get(&key())), (None, None));
        cache.coverage().put(before, key(), days(3));
        assert_eq!(cache.coverage().get(&key()), None);
    }

    #[test]
    fn the_coverage_shelf_is_bounded_by_the_days_it_holds() {
        let cache = ReferenceCache::default();
        cache.advance(true);
        let held = |cache: &ReferenceCache| {
            let entries = cache.inner.coverage.entries.lock().expect("lock");
            (entries.map.len(), entries.held)
        };
        let big = u32::try_from(COVERAGE_CAPACITY / 2).expect("fits");
        cache.coverage().put(cache.ticket(), "A".to_owned(), days(big));
        cache.coverage().put(cache.ticket(), "B".to_owned(), days(big));
        assert_eq!(held(&cache), (2, COVERAGE_CAPACITY));
        // replacing an entry counts its new weight only
        cache.coverage().put(cache.ticket(), "B".to_owned(), days(big));
        assert_eq!(held(&cache), (2, COVERAGE_CAPACITY));
        cache.coverage().put(cache.ticket(), "C".to_owned(), days(1));
        assert_eq!(held(&cache), (1, 1), "full: emptied, then took the new entry");
        cache.coverage().put(cache.ticket(), "D".to_owned(), days(big * 2 + 1));
        assert_eq!(held(&cache), (1, 1), "an entry over the whole capacity is not stored");
    }

    #[test]
    fn a_full_shelf_starts_afresh() {
        let cache = ReferenceCache::default();
        cache.advance(true);
        for i in 0..=SHELF_CAPACITY {
            cache.markets().put(cache.ticket(), i.to_string(), market("x"));
        }
        let len = cache.inner.markets.entries.lock().expect("lock").map.len();
        assert_eq!(len, 1, "the shelf was emptied when full, then took the last entry");
    }
}
