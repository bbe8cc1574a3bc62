//! The `roomcast` binary: parses the command line, sets up logging and
//! signals, and hands over to [`roomcast::server`].

use clap::{Parser, Subcommand};
use roomcast::config::Config;
use roomcast::server::Server;
use tracing_subscriber::EnvFilter;

/// roomcast: real-time WebSocket messaging with groups.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<Config>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(config) => runtime.block_on(async {
            let server = Server::bind(*config).await?;
            server.run(shutdown_signal()).await
        }),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
