//! Database access: where the database is (DATABASE_URL or a private cluster), connecting with a clear error, and
//! the connection pool the services share.

use std::{
    collections::{BTreeSet, HashMap},
    ops::Deref,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
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
            // no validation query on every checkout (a round trip per RPC): a connection that broke is seen as
            // closed and discarded when it is returned, and its RPC fails with UNAVAILABLE
            .test_on_check_out(false)
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
            notifications: Some(notifications),
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        conn.client.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken.load(Ordering::Relaxed) || conn.client.is_closed()
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
    /// The channels notified since the listener last looked (only a connection that LISTENs gets any); closed
    /// when the connection is.
    notifications: Option<Notifications>,
}

impl Conn {
    /// Makes the pool discard this connection when it is returned.
    pub fn discard(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// This connection's notifications, for the one user that listens (see
    /// [`Pool::dedicated_connection`](bb8::Pool::dedicated_connection)).
    pub fn take_notifications(&mut self) -> Option<Notifications> {
        self.notifications.take()
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
