//! The `roomcast` binary: parses the command line, sets up logging and
//! signals, and hands over to the library (`server`, `client`).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use roomcast::config::{self, ConfigArgs};
use roomcast::server::Server;

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
    ///
    /// Settings come from flags, then ROOMCAST_* environment variables,
    /// then the --config TOML file, then defaults.
    Serve(Box<ConfigArgs>),
    /// Print the effective configuration as TOML (a good starting file).
    #[command(name = "config")]
    ShowConfig {
        #[command(flatten)]
        args: Box<ConfigArgs>,
        /// Print the secrets (`api_key` and `jwt_secret`) instead of a
        /// placeholder.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Connect to a server: print the messages received, publish stdin lines.
    Client(roomcast::client::ClientArgs),
    /// Load-test a server: connections, fan-out, echo, shootout, sweeps.
    Bench(roomcast::bench::BenchArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let sub = matches
        .subcommand()
        .map(|(_, m)| m)
        .expect("a subcommand is required");
    match cli.command {
        Command::Serve(args) => {
            let config = match args.resolve(sub) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            roomcast::logging::init(config.log_format, config.log_level.as_deref());
            if let Some(w) = config::unknown_env_warning(&config::unknown_env_vars()) {
                tracing::warn!("{w}");
            }
            if let Some(w) = roomcast::http::api::proxy_without_key_warning(&config) {
                tracing::warn!("{w}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            let result = runtime.block_on(async {
                let server = Server::bind(config).await?;
                server.run(shutdown_signal()).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Client(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            // Exit at once: a pending stdin read blocks a thread that
            // dropping the runtime would wait for.
            std::process::exit(runtime.block_on(roomcast::client::run_stdio(args)))
        }
        Command::Bench(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if args.common.threads > 0 {
                builder.worker_threads(args.common.threads);
            }
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            match runtime.block_on(roomcast::bench::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::ShowConfig { args, show_secrets } => match args.resolve(sub) {
            Ok(config) => {
                if let Some(w) = config::unknown_env_warning(&config::unknown_env_vars()) {
                    eprintln!("roomcast: warning: {w}");
                }
                if let Some(w) = roomcast::http::api::proxy_without_key_warning(&config) {
                    eprintln!("roomcast: warning: {w}");
                }
                print!("{}", config.to_toml(show_secrets));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("roomcast: {e}");
    ExitCode::from(2)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
