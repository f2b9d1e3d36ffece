//! `lablink-client-daemon`: see the crate docs and `dist/` for the systemd unit.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    // In a workspace container, as its helper (`helper.rs`): no logging set-up, its
    // stdout is the wire.
    if lablink_client_daemon::helper::is_helper_invocation() {
        std::process::exit(lablink_client_daemon::helper::serve().await);
    }
    // journald adds its own timestamps; keep lines plain and greppable.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args = lablink_client_daemon::config::Args::parse();
    std::process::exit(lablink_client_daemon::cli::main(args).await);
}
