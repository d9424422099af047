//! The generated protobuf and gRPC code of `kalshi.replay.v1`, the descriptor set served by reflection, and the
//! conversions between wire types and domain types.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic)]

tonic::include_proto!("kalshi.replay.v1");

/// `TradeBatch` and `TradeColumns` are written by hand (see their docs); they belong here with the other messages.
pub use crate::trades::{TradeBatch, TradeColumns};

/// The encoded file descriptor set of every proto file, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kalshi_replay_descriptor");
