//! Generates the gRPC code from proto/ with a vendored protoc, writes the file descriptor set that the reflection
//! service serves, and embeds the SQL migrations.

use std::{env, error::Error, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/kalshi/replay/v1/types.proto",
    "proto/kalshi/replay/v1/reference.proto",
    "proto/kalshi/replay/v1/replay.proto",
    "proto/kalshi/replay/v1/ingest.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // tonic-prost-build 0.14 does not print these itself
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // the vendored protoc is handed over through the config, not the PROTOC variable (set_var is unsafe in 2024)
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // RPCs whose issue has not landed answer UNIMPLEMENTED without a hand-written stub
        .generate_default_stubs(true)
        // batches of trades the server encodes by hand, from what it read (src/trades.rs)
        .extern_path(".kalshi.replay.v1.TradeBatch", "crate::proto::batch::TradeBatch")
        .extern_path(".kalshi.replay.v1.TradeColumns", "crate::proto::batch::TradeColumns")
        .file_descriptor_set_path(out_dir.join("kalshi_replay_descriptor.bin"))
        .compile_with_config(
            config,
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("proto"), include],
        )?;

    embed_migrations(&out_dir)?;
    Ok(())
}

/// Writes `migrations.rs`: a sorted slice of (version, name, sql) from migrations/NNNN_name.sql, so the binary
/// carries its schema and a new file is picked up without touching Rust code.
fn embed_migrations(out_dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("migrations");
    let mut entries = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
        let Some(stem) = file.strip_suffix(".sql") else { continue };
        let (version, name) =
            stem.split_once('_').ok_or_else(|| format!("migration {file}: expected NNNN_name.sql"))?;
        let version: i32 =
            version.parse().map_err(|_| format!("migration {file}: version {version:?} is not a number"))?;
        entries.push((version, name.to_owned(), path));
    }
    entries.sort();
    if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("two migrations with version {}", w[0].0).into());
    }
    let mut code = String::from("&[\n");
    for (version, name, path) in entries {
        code.push_str(&format!(
            "    crate::store::migrate::Migration {{ version: {version}, name: {name:?}, sql: include_str!({:?}) }},\n",
            path.display().to_string()
        ));
    }
    code.push_str("]\n");
    fs::write(out_dir.join("migrations.rs"), code)?;
    Ok(())
}
