//! Database access: where the database is (DATABASE_URL or a private cluster), connecting with a clear error, and
//! the connection pool the services share.
//!
//! # Cancel-safe sections
//!
//! tonic drops a handler's future at any await when its client cancels or its deadline passes. A pooled
//! connection dropped in the middle of several statements (a transaction, a stream's snapshot, a write's staging
//! and commit) would go back to the pool in whatever state it was left: `idle in transaction`, holding locks, or
//! with a statement still waiting for a lock that it will take as soon as it is granted, for the next user to
//! inherit. So every such sequence runs as a *section* of its connection ([`Conn::section`], or
//! [`Conn::begin_section`] and [`Conn::end_section`] for one that outlives a single future). A connection with a
//! section begun and not ended, because its future was dropped or its work failed, is never taken back: the pool
//! discards it ([`Manager::has_broken`]) and PostgreSQL gets a cancel request for whatever it still runs, because
//! a backend that waits for a lock does not notice that its client closed the socket. Closing the connection
//! then rolls back its transaction and releases its locks and temporary tables.
//!
//! A connection whose socket closed (PostgreSQL restarted, the network broke) is never handed out: the check on
//! checkout ([`Manager::is_valid`]) looks only at the client's state, without a round trip, and bb8 then takes
//! another connection or makes a new one.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Deref,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement, config::Host, types::Type};

use crate::{
    error::{Error, error_chain},
    store::pg::PrivatePostgres,
};

/// The pool every RPC borrows connections from.
pub type Pool = bb8::Pool<Manager>;

/// Most prepared statements one pooled connection keeps. The services' SQL texts are a small fixed set (filters
/// that are set or not), so the cache only overflows if that ever changes; it then starts afresh.
const STATEMENT_CACHE: usize = 256;

/// How long a cancel request for an abandoned connection may take (it opens a connection of its own).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Name of the database the private cluster keeps the data in.
const PRIVATE_DB: &str = "kalshi_replay";

/// Session settings of every connection: UTC, so that day boundaries and rendered timestamps never follow a
/// server's local zone; backslashes in string literals are plain characters (the replays' COPY statements
/// inline their values, see `replay::sql::literal`); and no NOTICEs (such as "already exists, skipping" of idempotent DDL) in the logs.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c client_min_messages=warning -c standard_conforming_strings=on";

/// Where the database is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Options {
    /// A PostgreSQL URL; None: the private cluster in `data_dir`.
    pub database_url: Option<String>,
    /// Directory of the private cluster (used only without `database_url`).
    pub data_dir: PathBuf,
    /// How long to wait for the database at start-up.
    pub connect_timeout: Duration,
}

/// The database a command works on: an external server, or a private cluster this process owns.
#[derive(Debug)]
pub struct Database {
    config: Config,
    private: Option<PrivatePostgres>,
}

impl Database {
    /// Uses DATABASE_URL when set; otherwise starts (and, the first time, creates) the private cluster in
    /// `args.data_dir`.
    pub async fn open(args: &Options) -> Result<Self, Error> {
        match &args.database_url {
            Some(url) => {
                let config = parse_url(url)?;
                Ok(Self { config, private: None })
            }
            None => {
                let private = PrivatePostgres::start(&args.data_dir.join("pg")).await?;
                let admin = connect(&private.config("postgres"), args.connect_timeout).await?;
                let exists =
                    admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&PRIVATE_DB]).await?.is_some();
                if !exists {
                    admin.batch_execute(&format!("CREATE DATABASE {PRIVATE_DB}")).await?;
                }
                let config = with_session_options(private.config(PRIVATE_DB));
                Ok(Self { config, private: Some(private) })
            }
        }
    }

    /// An external database at `config` (the tests use this for their per-test databases).
    pub fn external(config: Config) -> Self {
        Self { config: with_session_options(config), private: None }
    }

    /// A URL of the database for another process (e.g. `psql`): DATABASE_URL, or the private cluster's.
    pub fn url(&self, database_url: Option<&str>) -> Option<String> {
        database_url.map(str::to_owned).or_else(|| self.private.as_ref().map(|p| p.url(PRIVATE_DB)))
    }

    /// The connection settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A single connection, e.g. for migrations or a bulk load.
    pub async fn connect(&self, timeout: Duration) -> Result<Client, Error> {
        connect(&self.config, timeout).await
    }

    /// A pool of up to `size` connections. Fails with a clear error when the database cannot be reached, rather
    /// than at the first request.
    pub async fn pool(&self, size: u32, timeout: Duration) -> Result<Pool, Error> {
        // prove the database is reachable first: bb8 would otherwise retry quietly until the first request
        drop(self.connect(timeout).await?);
        let manager = Manager { config: self.config.clone() };
        bb8::Pool::builder()
            .max_size(size)
            .connection_timeout(timeout)
            // checked on checkout without a round trip (see `Manager::is_valid`): after a restart of PostgreSQL
            // every idle connection is dead, and the next requests must get fresh ones, not fail
            .test_on_check_out(true)
            .build(manager)
            .await
            .map_err(|e| Error::Connect { target: describe(&self.config), reason: e.to_string() })
    }

    /// Stops the private cluster, if this process started one.
    pub async fn shutdown(self) -> Result<(), Error> {
        if let Some(private) = self.private {
            private.stop().await?;
        }
        Ok(())
    }
}

/// Makes the pool's connections, each with its own cache of prepared statements and a signal of the
/// notifications (LISTEN) it receives.
#[derive(Debug)]
pub struct Manager {
    config: Config,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Conn, Self::Error> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let notifications = Notifications::default();
        let notified = notifications.clone();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => notified.push(n.channel()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "database connection closed");
                        break;
                    }
                    None => break,
                }
            }
            notified.close();
        });
        Ok(Conn {
            client,
            statements: Mutex::default(),
            broken: AtomicBool::new(false),
            sections: AtomicUsize::new(0),
            cancelled: AtomicBool::new(false),
            notifications: Some(notifications),
        })
    }

    /// Called by bb8 on every checkout: a connection whose socket closed is refused (bb8 then tries the next one
    /// or connects anew). No round trip: a validation query per checkout would cost a lookup half its time, and a
    /// connection that breaks later fails its request with UNAVAILABLE anyway.
    async fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        if conn.client.is_closed() {
            // fails at once with tokio-postgres' "connection closed", the only way to make its error type
            return conn.client.simple_query("").await.map(drop);
        }
        Ok(())
    }

    /// Called by bb8 when a connection is returned: one that was discarded, left in the middle of a section or
    /// closed is dropped (which closes it), after a cancel request for a statement it may still run.
    fn has_broken(&self, conn: &mut Conn) -> bool {
        let abandoned = conn.sections.load(Ordering::Acquire) > 0;
        if abandoned {
            // also when the client is closed: a backend waiting for a lock outlives its socket
            conn.spawn_cancel();
        }
        abandoned || conn.broken.load(Ordering::Relaxed) || conn.client.is_closed()
    }
}

/// A pooled connection: the client, and the statements prepared on it so far.
///
/// A statement prepared once per connection spares PostgreSQL the parse, analysis and planning of every call,
/// which measured about half of its work for a lookup by key.
#[derive(Debug)]
pub struct Conn {
    client: Client,
    /// By SQL text; one text is always prepared with the same parameter types.
    statements: Mutex<HashMap<String, Statement>>,
    /// Set when the session is in a state the next user must not inherit (e.g. a transaction that could not be
    /// rolled back): the pool then discards the connection instead of taking it back.
    broken: AtomicBool,
    /// Sections begun and not ended (see the module's doc): while above zero, the session may hold a
    /// transaction, locks or a running statement, and the pool discards the connection.
    sections: AtomicUsize,
    /// Set once a cancel request was sent, so that the pool does not send a second one.
    cancelled: AtomicBool,
    /// The channels notified since the listener last looked (only a connection that LISTENs gets any); closed
    /// when the connection is.
    notifications: Option<Notifications>,
}

impl Conn {
    /// Makes the pool discard this connection when it is returned.
    pub fn discard(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Runs `work`, several statements that must complete together, as a section of this connection: if `work`
    /// fails, or its future is dropped before it completes, the connection is not taken back by the pool (see
    /// the module's doc). Sections nest.
    pub async fn section<T, E>(&self, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        self.begin_section();
        let done = work.await;
        if done.is_ok() {
            self.end_section();
        }
        done
    }

    /// Runs `work`, several autocommitted reads sent together on this connection (a pipeline), as a section that
    /// fails only when dropped before it completed: each read is a statement of its own, so an error leaves the
    /// session clean, but a pipeline dropped mid-way leaves statements running that the next user would queue
    /// behind.
    pub async fn reads<T>(&self, work: impl Future<Output = T>) -> T {
        self.begin_section();
        let done = work.await;
        self.end_section();
        done
    }

    /// Begins a section that spans several futures (e.g. a stream's snapshot, from BEGIN until its ROLLBACK);
    /// until the matching [`end_section`](Self::end_section), the pool discards the connection when it is
    /// returned.
    pub fn begin_section(&self) {
        self.sections.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends a section begun by [`begin_section`](Self::begin_section): its work completed and left the session
    /// clean (committed or rolled back).
    pub fn end_section(&self) {
        let before = self.sections.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "end_section without begin_section");
    }

    /// Gives the connection up: asks PostgreSQL to cancel what it runs now, and makes the pool discard the
    /// connection. A cancel request is a signal with no answer: it may land after the statement ended, on
    /// whatever the connection runs next, so the connection is never reused.
    pub async fn abandon(&self) {
        self.discard();
        if self.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        cancel(self.client.cancel_token()).await;
    }

    /// As [`abandon`](Self::abandon)'s cancel request, on a task of its own (from bb8's synchronous hook).
    fn spawn_cancel(&self) {
        if self.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(cancel(self.client.cancel_token()))),
            // no runtime (the process is ending): closing the socket is all that is left
            Err(_) => tracing::debug!("no runtime to send a cancel request on"),
        }
    }

    /// This connection's notifications, for the one user that listens (see
    /// [`Pool::dedicated_connection`](bb8::Pool::dedicated_connection)).
    pub fn take_notifications(&mut self) -> Option<Notifications> {
        self.notifications.take()
    }
}

/// Sends a cancel request (a connection of its own to the server), bounded by [`CANCEL_TIMEOUT`].
async fn cancel(token: tokio_postgres::CancelToken) {
    match tokio::time::timeout(CANCEL_TIMEOUT, token.cancel_query(NoTls)).await {
        Ok(Ok(())) => tracing::debug!("cancel request sent for an abandoned connection"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cancel request failed"),
        Err(_) => tracing::warn!(timeout = ?CANCEL_TIMEOUT, "cancel request timed out"),
    }
}

/// The channels a connection was notified on and not yet told of. A set, not a queue: what the listener needs
/// is which channels changed since it last looked, so a burst of notifications (one per writing statement)
/// takes as little memory as one, and the channels stay apart.
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    shared: Arc<NotificationsShared>,
}

#[derive(Debug, Default)]
struct NotificationsShared {
    state: Mutex<Pending>,
    /// Woken after each change of `state`; a wake-up with no waiter is kept for the next one.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    channels: BTreeSet<String>,
    closed: bool,
}

impl Notifications {
    fn push(&self, channel: &str) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.channels.contains(channel) {
            state.channels.insert(channel.to_owned());
        }
        drop(state);
        self.shared.changed.notify_one();
    }

    fn close(&self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.shared.changed.notify_one();
    }

    /// The channels notified since the last call, once there is at least one; None once the connection is
    /// closed and every notification was taken.
    pub async fn recv(&self) -> Option<BTreeSet<String>> {
        loop {
            {
                let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                if !state.channels.is_empty() {
                    return Some(std::mem::take(&mut state.channels));
                }
                if state.closed {
                    return None;
                }
            }
            self.shared.changed.notified().await;
        }
    }
}

/// A connection that runs prepared statements: a pooled [`Conn`] keeps them, a plain [`Client`] (a test's, a
/// one-off command's) prepares them anew.
pub trait Prepare: Sync {
    /// The client to run the statement on.
    fn client(&self) -> &Client;

    /// `sql` prepared with parameter `types`.
    fn prepared(
        &self,
        sql: &str,
        types: &[Type],
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send;
}

impl Prepare for Conn {
    fn client(&self) -> &Client {
        &self.client
    }

    /// From this connection's cache, or prepared now (one round trip) and kept.
    async fn prepared(&self, sql: &str, types: &[Type]) -> Result<Statement, tokio_postgres::Error> {
        let cached = self.statements.lock().unwrap_or_else(PoisonError::into_inner).get(sql).cloned();
        if let Some(statement) = cached {
            return Ok(statement);
        }
        let statement = self.client.prepare_typed(sql, types).await?;
        let mut statements = self.statements.lock().unwrap_or_else(PoisonError::into_inner);
        if statements.len() >= STATEMENT_CACHE {
            // dropping a Statement closes it on the server
            statements.clear();
        }
        statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Prepare for Client {
    fn client(&self) -> &Client {
        self
    }

    async fn prepared(&self, sql: &str, types: &[Type]) -> Result<Statement, tokio_postgres::Error> {
        self.prepare_typed(sql, types).await
    }
}

impl Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Parses a DATABASE_URL (URL or key=value form).
pub fn parse_url(url: &str) -> Result<Config, Error> {
    let config: Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::invalid("DATABASE_URL", format!("not a PostgreSQL URL: {e}")))?;
    Ok(with_session_options(config))
}

fn with_session_options(mut config: Config) -> Config {
    config.options(SESSION_OPTIONS).application_name("kalshi-replay");
    config
}

/// Connects one client and drives its connection on a task. The error names the server (never the password)
/// and the reason, in one line.
pub async fn connect(config: &Config, timeout: Duration) -> Result<Client, Error> {
    let attempt = tokio::time::timeout(timeout, config.connect(NoTls)).await;
    let failure = |reason: String| Error::Connect { target: describe(config), reason };
    let (client, connection) = match attempt {
        Err(_) => return Err(failure(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => return Err(failure(error_chain(&e))),
        Ok(Ok(pair)) => pair,
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// host:port/dbname for messages; credentials are left out.
pub fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}
