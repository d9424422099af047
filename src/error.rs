//! The service's error type and its one mapping to gRPC status codes.
//!
//! Every variant is matched explicitly in `From<Error> for Status` (no catch-all arm), so a new variant does not
//! compile until someone decides its code. Database details are logged, never sent: clients get a bounded message
//! without SQL text.

use tokio_postgres::error::SqlState;
use tonic::{Code, Status};

use crate::store::pg::PgError;

/// Everything that can go wrong while serving or maintaining the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, e.g. `start_time` or `trades[3].yes_price_micros`.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A request or an input goes past a documented maximum of its size (items in one write, an import line or
    /// file). INVALID_ARGUMENT like a bad field, but kept apart: it is no bad item that `import --skip-bad` could
    /// skip, and the whole write is refused.
    #[error("{field}: {reason}")]
    TooLarge {
        /// Where the limit was reached, e.g. `trades[10000000]` or `ws.jsonl:17`.
        field: String,
        /// The limit, by its name, and what to do.
        reason: String,
    },
    /// Named things do not exist.
    #[error("unknown {kind}: {}", names.join(", "))]
    NotFound {
        /// What kind of thing, e.g. `market ticker`.
        kind: &'static str,
        /// The missing names.
        names: Vec<String>,
    },
    /// The client's deadline (grpc-timeout) passed while its stream was still running.
    #[error("deadline exceeded; resume with the last resume_token received")]
    DeadlineExceeded,
    /// A stream's client read nothing for the idle timeout; the stream was ended to free its connections.
    #[error(
        "stream ended: the client read nothing for {} s (--stream-idle-timeout); resume with the last resume_token \
         received",
        .0.as_secs_f64()
    )]
    StreamIdle(std::time::Duration),
    /// The server is shutting down: new streams are refused and streams in flight end after the drain's grace.
    #[error("the server is shutting down; resume with the last resume_token received, on another server or later")]
    ShuttingDown,
    /// The database sent data this server cannot read (a bug, or a schema this binary does not know).
    #[error("malformed data from the database: {0}")]
    Malformed(String),
    /// A limit was hit (too many tickers, too many concurrent streams).
    #[error("{0}")]
    ResourceExhausted(String),
    /// No database connection could be had in time.
    #[error("database pool: {0}")]
    Pool(String),
    /// The database reported an error or the connection broke. Shown with the server's message for logs and the
    /// command line (tokio-postgres alone shows just "db error"); clients never see it.
    #[error("database: {}", database_detail(.0))]
    Database(#[from] tokio_postgres::Error),
    /// The private PostgreSQL cluster could not be started or stopped.
    #[error("private postgresql: {0}")]
    PrivatePostgres(#[from] PgError),
    /// The database could not be reached at start-up.
    #[error("cannot connect to postgresql at {target}: {reason}")]
    Connect {
        /// host:port/dbname, without credentials.
        target: String,
        /// The driver's reason.
        reason: String,
    },
    /// A migration failed or the database holds a migration history this binary does not know.
    #[error("migration {version} ({name}): {reason}")]
    Migration {
        /// The migration's version number.
        version: i32,
        /// The migration's name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The gRPC server could not be built or stopped serving with an error.
    #[error("grpc server: {0}")]
    Serve(String),
    /// An Arrow array or IPC message could not be made (LAYOUT_ARROW): a bug, since the server builds every
    /// column itself.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A task of the server panicked (a bug); caught where the task is awaited, so that its request fails
    /// instead of ending as if complete.
    #[error("panic: {0}")]
    Panic(String),
    /// The load generator could not run, e.g. the server to load cannot be reached or holds no data.
    #[error("bench: {0}")]
    Bench(String),
    /// An imported file holds a line or item that cannot be stored.
    #[error("{at}: {reason}")]
    Import {
        /// The file and line, e.g. `ws.jsonl:17`.
        at: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Kalshi's API answered with an error, or not at all, after the collector's retries.
    #[error("kalshi: {url}: {reason}")]
    Kalshi {
        /// The request, e.g. `https://api.elections.kalshi.com/trade-api/v2/markets/trades?ticker=...`.
        url: String,
        /// Kalshi's status and message, or the transport's error.
        reason: String,
    },
    /// A local file or socket operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, e.g. `bind 127.0.0.1:50051`.
        action: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The SQLSTATE and message of a database error, or the driver's error with its causes.
fn database_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error_chain(e),
    }
}

/// The error and its causes in one line: tokio-postgres shows "error connecting to server" and keeps the reason a
/// user can act on ("Connection refused") in the source.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Error {
    /// An INVALID_ARGUMENT error naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// The same error naming `field` instead, if it is an INVALID_ARGUMENT (for a caller that knows the full path
    /// of a field only it checked); any other error as it is.
    pub fn with_field(self, field: String) -> Self {
        match self {
            Self::InvalidArgument { reason, .. } => Self::InvalidArgument { field, reason },
            Self::TooLarge { reason, .. } => Self::TooLarge { field, reason },
            other => other,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { action: action.into(), source }
    }
}

impl<E: std::fmt::Display> From<bb8::RunError<E>> for Error {
    fn from(e: bb8::RunError<E>) -> Self {
        match e {
            bb8::RunError::User(e) => Self::Pool(e.to_string()),
            bb8::RunError::TimedOut => Self::Pool("timed out waiting for a connection".to_owned()),
        }
    }
}

/// The gRPC code for a database error, by SQLSTATE: a lost or shutting-down server is UNAVAILABLE (retryable), a
/// cancelled statement CANCELLED, exhausted resources RESOURCE_EXHAUSTED, a key conflict ALREADY_EXISTS, a
/// serialization conflict ABORTED; a data exception (class 22: a value out of range, a numeric overflow, a bad
/// encoding) comes from what a client sent past validation, INVALID_ARGUMENT, so the client learns that retrying
/// the same request cannot help; anything else is a bug or a schema problem: INTERNAL.
fn database_code(state: Option<&SqlState>) -> Code {
    let Some(state) = state else {
        // no SQLSTATE: the connection broke or could not be used
        return Code::Unavailable;
    };
    let class = &state.code()[..2];
    if class == "08"
        || *state == SqlState::ADMIN_SHUTDOWN
        || *state == SqlState::CRASH_SHUTDOWN
        || *state == SqlState::CANNOT_CONNECT_NOW
    {
        Code::Unavailable
    } else if *state == SqlState::QUERY_CANCELED {
        Code::Cancelled
    } else if class == "53" || *state == SqlState::PROGRAM_LIMIT_EXCEEDED {
        Code::ResourceExhausted
    } else if *state == SqlState::UNIQUE_VIOLATION {
        Code::AlreadyExists
    } else if *state == SqlState::T_R_SERIALIZATION_FAILURE || *state == SqlState::T_R_DEADLOCK_DETECTED {
        Code::Aborted
    } else if class == "22" {
        Code::InvalidArgument
    } else {
        Code::Internal
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument { .. } | Error::TooLarge { .. } | Error::Import { .. } => {
                Status::invalid_argument(e.to_string())
            }
            Error::NotFound { .. } => Status::not_found(e.to_string()),
            Error::ResourceExhausted(_) => Status::resource_exhausted(e.to_string()),
            Error::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
            Error::StreamIdle(_) | Error::ShuttingDown => Status::unavailable(e.to_string()),
            Error::Pool(ref reason) => {
                tracing::warn!(%reason, "no database connection");
                Status::unavailable("database unavailable, retry later")
            }
            Error::Database(ref db) => {
                let code = database_code(db.code());
                tracing::error!(error = %db, ?code, "database error");
                let message = match code {
                    Code::Unavailable => "database unavailable, retry later",
                    Code::Cancelled => "database statement cancelled",
                    Code::ResourceExhausted => "database resources exhausted",
                    Code::AlreadyExists => "already exists",
                    Code::Aborted => "conflict with a concurrent write, retry",
                    Code::InvalidArgument => "a value is out of the range the database can hold (data exception)",
                    _ => "internal database error",
                };
                Status::new(code, message)
            }
            Error::Connect { .. } => {
                tracing::error!(error = %e, "database connect");
                Status::unavailable("database unavailable, retry later")
            }
            Error::Malformed(_)
            | Error::PrivatePostgres(_)
            | Error::Migration { .. }
            | Error::Serve(_)
            | Error::Bench(_)
            | Error::Panic(_)
            | Error::Arrow(_)
            | Error::Kalshi { .. }
            | Error::Io { .. } => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code_without_leaking_internals() {
        let cases: Vec<(Error, Code, Option<&str>)> = vec![
            (Error::invalid("start_time", "must be before end_time"), Code::InvalidArgument, Some("start_time")),
            (
                Error::NotFound { kind: "market ticker", names: vec!["A".into(), "B".into()] },
                Code::NotFound,
                Some("unknown market ticker: A, B"),
            ),
            (Error::ResourceExhausted("too many tickers".into()), Code::ResourceExhausted, Some("too many")),
            (
                Error::Import { at: "ws.jsonl:3".into(), reason: "bad".into() },
                Code::InvalidArgument,
                Some("ws.jsonl:3"),
            ),
            (Error::Pool("secret host detail".into()), Code::Unavailable, None),
            (Error::Connect { target: "db:5432/x".into(), reason: "refused".into() }, Code::Unavailable, None),
            (
                Error::Migration { version: 1, name: "schema".into(), reason: "SELECT boom".into() },
                Code::Internal,
                None,
            ),
            (Error::io("bind", std::io::Error::other("secret")), Code::Internal, None),
            (Error::Serve("secret transport".into()), Code::Internal, None),
            (Error::Bench("secret server detail".into()), Code::Internal, None),
            (Error::PrivatePostgres(PgError::NoBinaries), Code::Internal, None),
            (Error::Malformed("secret bytes".into()), Code::Internal, None),
            (Error::Panic("secret invariant".into()), Code::Internal, None),
            (Error::Arrow(arrow_schema::ArrowError::InvalidArgumentError("secret".into())), Code::Internal, None),
            (Error::DeadlineExceeded, Code::DeadlineExceeded, Some("resume_token")),
            (Error::StreamIdle(std::time::Duration::from_secs(60)), Code::Unavailable, Some("--stream-idle-timeout")),
            (Error::ShuttingDown, Code::Unavailable, Some("shutting down")),
            (
                Error::TooLarge { field: "trades[10]".into(), reason: "max_rows_per_write".into() },
                Code::InvalidArgument,
                Some("trades[10]: max_rows_per_write"),
            ),
        ];
        for (error, code, must_contain) in cases {
            let shown = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            match must_contain {
                Some(text) => assert!(status.message().contains(text), "{}", status.message()),
                // internal details stay in the log
                None => assert!(!status.message().contains("secret") && !status.message().contains("SELECT")),
            }
        }
    }

    #[test]
    fn sqlstates_map_to_retryable_or_internal_codes() {
        let cases = [
            (None, Code::Unavailable),
            (Some(SqlState::CONNECTION_FAILURE), Code::Unavailable),
            (Some(SqlState::ADMIN_SHUTDOWN), Code::Unavailable),
            (Some(SqlState::CANNOT_CONNECT_NOW), Code::Unavailable),
            (Some(SqlState::QUERY_CANCELED), Code::Cancelled),
            (Some(SqlState::TOO_MANY_CONNECTIONS), Code::ResourceExhausted),
            (Some(SqlState::DISK_FULL), Code::ResourceExhausted),
            (Some(SqlState::UNIQUE_VIOLATION), Code::AlreadyExists),
            (Some(SqlState::T_R_SERIALIZATION_FAILURE), Code::Aborted),
            (Some(SqlState::NUMERIC_VALUE_OUT_OF_RANGE), Code::InvalidArgument),
            (Some(SqlState::DATETIME_FIELD_OVERFLOW), Code::InvalidArgument),
            (Some(SqlState::CHARACTER_NOT_IN_REPERTOIRE), Code::InvalidArgument),
            (Some(SqlState::SYNTAX_ERROR), Code::Internal),
            (Some(SqlState::UNDEFINED_TABLE), Code::Internal),
        ];
        for (state, code) in cases {
            assert_eq!(database_code(state.as_ref()), code, "{state:?}");
        }
    }
}
