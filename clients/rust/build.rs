//! Generates the plain tonic client of `kalshi.replay.v1` from the repository's proto/ with a vendored protoc:
//! every message generated as prost writes it (no hand-encoded types), clients only.

use std::{error::Error, path::PathBuf};

const PROTO_ROOT: &str = "../../proto";
const PROTOS: &[&str] = &[
    "kalshi/replay/v1/types.proto",
    "kalshi/replay/v1/reference.proto",
    "kalshi/replay/v1/replay.proto",
    "kalshi/replay/v1/ingest.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // tonic-prost-build 0.14 does not print this itself
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let root = PathBuf::from(PROTO_ROOT);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // the vendored protoc is handed over through the config, not the PROTOC variable (set_var is unsafe in 2024)
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // an Arrow batch's bytes go to the IPC decoder without a copy
    config.bytes([".kalshi.replay.v1.ArrowBatch.ipc"]);
    tonic_prost_build::configure().build_server(false).compile_with_config(
        config,
        &PROTOS.iter().map(|p| root.join(p)).collect::<Vec<_>>(),
        &[root, include],
    )?;
    Ok(())
}
