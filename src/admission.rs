//! Admission control: how many replay streams and writes run at once, in all and per client connection, and the
//! drain of streams at shutdown.
//!
//! Each stream holds one pooled connection for its whole life (two while it reads on a second one), and a client
//! that stops reading keeps it: without caps, a few stalled clients take the whole pool and every other request
//! waits for a connection until it times out. So a stream or a write is admitted only under its cap, and refused
//! at once with RESOURCE_EXHAUSTED naming the limit. With a pool of at least 2 x --max-streams + --max-writes
//! (the default), admitted work always finds its connections: a stream's second connection is taken only when
//! the pool has one free at once. Lookups and health use a pool of their own and never wait behind streams.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};

use crate::{error::Error, limits::Limits};

/// The server's admission of streams and writes; cloned into each service.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    streams: Arc<Semaphore>,
    max_streams: usize,
    writes: Arc<Semaphore>,
    max_writes: usize,
    /// Streams running per client connection.
    per_connection: Mutex<HashMap<SocketAddr, usize>>,
    max_per_connection: usize,
    /// Set at shutdown: when the streams in flight must end.
    drain: watch::Sender<Option<Instant>>,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: &Limits) -> Self {
        let (drain, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                streams: Arc::new(Semaphore::new(limits.max_streams)),
                max_streams: limits.max_streams,
                writes: Arc::new(Semaphore::new(limits.max_writes)),
                max_writes: limits.max_writes,
                per_connection: Mutex::new(HashMap::new()),
                max_per_connection: limits.max_streams_per_connection,
                drain,
            }),
        }
    }

    /// The data pool's size below which admitted work may wait for connections (each stream takes up to two).
    pub fn pool_needed(limits: &Limits) -> usize {
        2 * limits.max_streams + limits.max_writes
    }

    /// Admits a stream of the client connection `peer` (None when unknown: then only the total cap applies).
    pub fn stream(&self, peer: Option<SocketAddr>) -> Result<StreamPermit, Error> {
        if self.draining() {
            return Err(Error::ShuttingDown);
        }
        let total = self.inner.streams.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "too many streams: the server runs at most {} at once (--max-streams); retry later",
                self.inner.max_streams
            ))
        })?;
        if let Some(peer) = peer {
            let mut running = self.inner.per_connection.lock().unwrap_or_else(PoisonError::into_inner);
            let count = running.entry(peer).or_insert(0);
            if *count >= self.inner.max_per_connection {
                return Err(Error::ResourceExhausted(format!(
                    "too many streams on this connection: at most {} at once (--max-streams-per-connection); \
                     retry later or open another connection",
                    self.inner.max_per_connection
                )));
            }
            *count += 1;
        }
        Ok(StreamPermit { _total: total, peer: peer.map(|p| (self.inner.clone(), p)) })
    }

    /// Admits a write.
    pub fn write(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.inner.writes.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "too many writes: the server runs at most {} at once (--max-writes); retry later",
                self.inner.max_writes
            ))
        })
    }

    /// Starts the drain: streams in flight may run `grace` longer, new ones are refused.
    pub fn begin_drain(&self, grace: Duration) {
        self.inner.drain.send_replace(Some(Instant::now() + grace));
    }

    fn draining(&self) -> bool {
        self.inner.drain.borrow().is_some()
    }

    /// Completes when the drain's deadline has passed (never, if no drain begins).
    pub async fn drained(&self) {
        let mut drain = self.inner.drain.subscribe();
        let deadline = loop {
            if let Some(deadline) = *drain.borrow_and_update() {
                break deadline;
            }
            if drain.changed().await.is_err() {
                return std::future::pending().await;
            }
        };
        tokio::time::sleep_until(deadline).await;
    }
}

/// A running stream's place under the caps, given back when it is dropped.
#[derive(Debug)]
pub struct StreamPermit {
    _total: OwnedSemaphorePermit,
    peer: Option<(Arc<Inner>, SocketAddr)>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some((inner, peer)) = &self.peer {
            let mut running = inner.per_connection.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = running.get_mut(peer) {
                *count -= 1;
                if *count == 0 {
                    running.remove(peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(streams: usize, per_connection: usize, writes: usize) -> Limits {
        Limits {
            max_streams: streams,
            max_streams_per_connection: per_connection,
            max_writes: writes,
            ..Limits::default()
        }
    }

    #[test]
    fn streams_are_capped_in_all_and_per_connection_and_given_back() {
        let admission = Admission::new(&limits(3, 2, 1));
        let (a, b) = ("127.0.0.1:1000".parse().expect("addr"), "127.0.0.1:1001".parse().expect("addr"));
        let first = admission.stream(Some(a)).expect("1st");
        let _second = admission.stream(Some(a)).expect("2nd");
        let error = admission.stream(Some(a)).expect_err("per connection");
        assert!(error.to_string().contains("--max-streams-per-connection"), "{error}");
        let _third = admission.stream(Some(b)).expect("another connection");
        let error = admission.stream(Some(b)).expect_err("in all");
        assert!(error.to_string().contains("--max-streams"), "{error}");
        drop(first);
        admission.stream(Some(a)).expect("a place came back");
        let _write = admission.write().expect("write");
        assert!(admission.write().expect_err("one write").to_string().contains("--max-writes"));
    }

    #[tokio::test]
    async fn a_drain_refuses_new_streams_and_ends_at_its_deadline() {
        let admission = Admission::new(&limits(2, 2, 0));
        let started = Instant::now();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.drained().await }
        });
        admission.begin_drain(Duration::from_millis(50));
        assert!(matches!(admission.stream(None), Err(Error::ShuttingDown)));
        waiting.await.expect("drained");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
