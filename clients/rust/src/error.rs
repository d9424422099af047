//! The one error type of the client: what the server answered (its gRPC code and message), or what the client
//! found wrong with an answer.

use tonic::Code;

/// An error of a call or a stream.
///
/// [`code`](Error::code) and [`message`](Error::message) read the same for every variant: for a server's answer
/// they are its status code and text (NOT_FOUND names the missing ticker, INVALID_ARGUMENT the field); the
/// client's own findings map to the code that fits them best.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or the transport, for a broken connection) ended the call with this status. For a replay
    /// stream, a status that could be resumed (UNAVAILABLE, DEADLINE_EXCEEDED) shows up here only after the
    /// retries ran out.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The target is not a URI, or no connection could be made to it. Code UNAVAILABLE.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The target as given.
        target: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A value given to the client that it cannot use, such as a time that is not RFC 3339. Code
    /// INVALID_ARGUMENT.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The stream's summary does not match what the client delivered: count or content hash. Code DATA_LOSS.
    #[error("summary mismatch: {0}")]
    SummaryMismatch(String),
    /// An answer the contract does not allow: a payload of another layout, an Arrow IPC message that does not
    /// decode, data after the summary. Code INTERNAL.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC code: the server's, or the one standing for the client's finding (see the variants).
    pub fn code(&self) -> Code {
        match self {
            Self::Status(status) => status.code(),
            Self::Connect { .. } => Code::Unavailable,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::SummaryMismatch(_) => Code::DataLoss,
            Self::Protocol(_) => Code::Internal,
        }
    }

    /// The server's message for a status; the client's description otherwise.
    pub fn message(&self) -> String {
        match self {
            Self::Status(status) => status.message().to_owned(),
            other => other.to_string(),
        }
    }

    /// The status, when the server (or the transport) answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }
}
