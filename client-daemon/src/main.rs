//! `lablink-client-daemon`: see the crate docs and `dist/` for the systemd unit.

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    // journald adds its own timestamps; keep lines plain and greppable.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args = lablink_client_daemon::config::Args::parse();
    if args.needs_enrollment() {
        let enrollment = lablink_client_daemon::enroll::Enrollment {
            api_url: &args.api_url,
            secret: args.enroll_secret.as_deref().unwrap_or_default(),
            instance_id: args.instance_id.as_deref(),
            credential_file: &args.credential_file,
            hostname_file: &args.hostname_file(),
        };
        tokio::select! {
            _ = lablink_client_daemon::enroll::enroll(&enrollment) => {}
            _ = terminate() => return,
        }
    }
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lablink-client-daemon: cannot start: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(host = %cfg.hostname, api = %cfg.api_url, holder = %cfg.holder_url, "starting");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shipper = lablink_client_daemon::ship_logs(&cfg, stopped);
    tokio::select! {
        r = lablink_client_daemon::run(cfg) => {
            if let Err(e) = r {
                eprintln!("lablink-client-daemon: {e}");
                std::process::exit(1);
            }
        }
        _ = terminate() => tracing::info!("stopping"),
    }
    // Let the log shipper finish the batch in flight (and save its cursor).
    let _ = stop.send(true);
    if let Some(h) = shipper {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), h).await;
    }
}

async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
