//! `lablink-holder`: run as an ECS Fargate task (or by the local runner).
//! Settings: see [`lablink_holder::HolderConfig`] and docs/operations.md.

use tracing_subscriber::EnvFilter;

// jemalloc leaves the untouched parts of each connection's HTTP buffers unbacked (its
// metadata lives outside the allocations), which keeps a waiting VM under 10 KB of RSS
// where glibc malloc took about 13 KB (docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let mut config =
        lablink_core::config::exit_on_error("lablink-holder", lablink_holder::HolderConfig::from_env());
    if config.db.uses_iam() {
        // On Fargate the task role comes from ECS's credentials endpoint, not the
        // environment: IAM database tokens are signed with AWS's default chain.
        let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
            .build()
            .await;
        config.db =
            config
                .db
                .with_iam_credentials(aws_credential_types::provider::SharedCredentialsProvider::new(
                    chain,
                ));
    }
    // Each waiting VM is one open socket: allow as many as the hard limit does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let running = match lablink_holder::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lablink-holder: cannot listen: {e}");
            std::process::exit(1);
        }
    };
    // Printed (not only logged) so a parent process can read the bound port.
    println!("lablink-holder listening on {}", running.addr);
    tracing::info!(addr = %running.addr, "serving POST /vm_startup, POST /vm_export and GET /healthz");
    shutdown_signal().await;
    tracing::info!(
        waiters = running.holder.registry.len(),
        "shutting down: answering every waiter"
    );
    if let Err(e) = running.shutdown().await {
        tracing::error!(error = %e, "server error during shutdown");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
