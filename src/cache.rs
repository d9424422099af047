//! The cache of reference lookups by key (GetSeries, GetEvent, GetMarket, GetSettlement), kept coherent with
//! the database by LISTEN/NOTIFY.
//!
//! A lookup by key is the hottest call of a backtest's set-up and its rows change rarely, yet on 2 cores the
//! database round trip costs several times the gRPC call itself. Every statement that writes series, events,
//! markets or settlements notifies [`CHANNEL`] (migrations/0004), whoever the writer is. The listener holds its
//! own connection; each notification bumps a generation and empties the cache.
//!
//! Coherence: a lookup that misses takes the generation before it reads the database and stores its answer
//! only if the generation is unchanged afterwards. An answer read before a commit whose notification came in
//! meanwhile is never stored; one stored before that notification arrived is emptied by it. So an entry
//! outlives its row's change by the notification's delivery at most (well under a millisecond on one machine).
//! While the listener is not listening (starting, or its connection was lost and it reconnects), nothing is
//! stored and nothing is served: every lookup reads the database.

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
    db::Pool,
    proto::{GetEventResponse, Market, Series, Settlement},
};

/// The notification channel of reference writes (migrations/0004_reference_notify.sql).
pub const CHANNEL: &str = "kalshi_replay_reference";
/// The listener's application_name, which tells it apart from the pool's connections in pg_stat_activity.
pub const LISTENER_NAME: &str = "kalshi-replay cache listener";
/// Most entries of each kind; a full shelf starts afresh rather than tracking recency on every hit.
const SHELF_CAPACITY: usize = 20_000;
/// How long the listener waits before it reconnects after losing its connection.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// The cached lookups, shared by the service and its listener.
#[derive(Debug, Clone, Default)]
pub struct ReferenceCache {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Odd while listening: every change of the listener's state and every notification adds one or two, so a
    /// ticket taken while listening is invalid after any of them.
    generation: AtomicU64,
    series: Shelf<String, Series>,
    events: Shelf<(String, bool), GetEventResponse>,
    markets: Shelf<String, Market>,
    settlements: Shelf<String, Settlement>,
}

/// The generation a lookup saw before reading the database; None while the cache is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl ReferenceCache {
    /// A ticket for a lookup, or None while the listener is not listening (then nothing may be stored).
    pub fn ticket(&self) -> Option<Ticket> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        (generation % 2 == 1).then_some(Ticket(generation))
    }

    /// Whether `ticket` is still current: no notification and no change of the listener since it was taken.
    fn current(&self, ticket: Ticket) -> bool {
        self.inner.generation.load(Ordering::Acquire) == ticket.0
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
    }

    /// Listens for reference writes on a connection of its own until dropped, reconnecting when the connection
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

    /// One connection's life: LISTEN, then a new generation per signal, until the connection closes.
    async fn listen_once(&self, pool: &Pool) -> Result<(), tokio_postgres::Error> {
        let mut conn = pool.dedicated_connection().await?;
        let mut notified = conn.take_notifications().expect("a new connection has its notifications");
        conn.batch_execute(&format!("SET application_name = '{LISTENER_NAME}'; LISTEN {CHANNEL}")).await?;
        // from here on every write is notified to this connection: the cache may serve
        self.advance(true);
        tracing::debug!("reference cache listening");
        while notified.recv().await.is_some() {
            self.advance(true);
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
        self.shelf.entries.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
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
        let mut entries = self.shelf.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // checked under the shelf's lock: `advance` bumps the generation before it empties the shelf, so an
        // answer stored after the check is emptied by the clear that follows the bump
        if !self.cache.current(ticket) {
            return;
        }
        if entries.len() >= SHELF_CAPACITY {
            entries.clear();
        }
        entries.insert(key, value);
    }
}

#[derive(Debug)]
struct Shelf<K, V> {
    entries: Mutex<HashMap<K, V>>,
}

impl<K, V> Default for Shelf<K, V> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<K, V> Shelf<K, V> {
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

    #[test]
    fn a_full_shelf_starts_afresh() {
        let cache = ReferenceCache::default();
        cache.advance(true);
        for i in 0..=SHELF_CAPACITY {
            cache.markets().put(cache.ticket(), i.to_string(), market("x"));
        }
        let len = cache.inner.markets.entries.lock().expect("lock").len();
        assert_eq!(len, 1, "the shelf was emptied when full, then took the last entry");
    }
}
