//! `lablink-holder`: run as an ECS Fargate task (or by the local runner).
//! Settings: see [`lablink_holder::HolderConfig`] and docs/operations.md.
//! `lablink-holder setup-db`: the database setup the task's `db-setup` container runs
//! before the holder starts (roles, migrations, grants: [`lablink_db::roles::setup`]).

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
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("setup-db") => return setup_db().await,
        Some(other) => {
            eprintln!("lablink-holder: unknown command {other:?} (usage: lablink-holder [setup-db])");
            std::process::exit(2);
        }
    }
    let mut config =
        lablink_core::config::exit_on_error("lablink-holder", lablink_holder::HolderConfig::from_env());
    config.db = with_task_credentials(config.db).await;
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

/// On Fargate the task role comes from ECS's credentials endpoint, not the environment:
/// IAM database tokens are signed with AWS's default chain.
async fn with_task_credentials(db: lablink_db::DbConfig) -> lablink_db::DbConfig {
    if !db.uses_iam() {
        return db;
    }
    let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .build()
        .await;
    db.with_iam_credentials(aws_credential_types::provider::SharedCredentialsProvider::new(
        chain,
    ))
}

/// Run the database setup and exit: 0 when done, 1 when it failed (the holder container
/// then never starts: it depends on this one's success).
async fn setup_db() {
    let db = lablink_core::config::exit_on_error(
        "lablink-holder setup-db",
        lablink_holder::setup_config_from_env(),
    );
    let db = with_task_credentials(db).await;
    match lablink_holder::setup_db(&db).await {
        Ok(done) => tracing::info!(
            created_roles = ?done.created_roles,
            version_before = ?done.version_before,
            version_after = ?done.version_after,
            not_yet_granted = ?done.absent_tables,
            "database set up"
        ),
        Err(e) => {
            tracing::error!(error = %e, "database setup failed");
            eprintln!("lablink-holder setup-db: {e}");
            std::process::exit(1);
        }
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
