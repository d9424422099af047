//! The `kalshi-replay` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use kalshi_replay::{
    app, bench,
    config::{Cli, Command},
    telemetry,
};

/// mimalloc instead of the system allocator: a page of markets or a batch of trades is many small strings, and
/// glibc's malloc measured a tenth of the server's time on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    let result = match cli.command {
        Command::Serve(args) => app::serve(args).await,
        Command::Migrate(args) => app::migrate(args).await,
        Command::Generate(args) => app::generate(args).await,
        Command::Demo(args) => app::demo(args).await,
        Command::Import(args) => app::import(args).await,
        Command::Collect(args) => app::collect(args).await,
        Command::Bench(args) => bench::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
