//! The protobuf and gRPC code of `kalshi.replay.v1`: the generated messages and services, the two batch
//! messages written by hand (`batch`), and the descriptor set served by reflection. It depends on nothing else
//! of the crate; conversions between the wire and the domain live beside the domain types that need them
//! ([`time`](crate::time) for timestamps, the stream bodies for their items).

mod batch;
mod generated {
    #![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic)]

    tonic::include_proto!("kalshi.replay.v1");
}

pub use batch::{TradeBatch, TradeColumns};
pub use generated::*;

/// The encoded file descriptor set of every proto file, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kalshi_replay_descriptor");
