//! The daemon's whole `main` after logging is set up: enroll if needed, then run until
//! SIGTERM/Ctrl-C, letting the log shipper finish its batch. Shared by the
//! `lablink-client-daemon` binary and `lablink-local client-daemon` (the local runner's
//! VMs).

use crate::config::Args;

/// Run the daemon; returns the process exit status.
pub async fn main(args: Args) -> i32 {
    if args.needs_enrollment() {
        let enrollment = crate::enroll::Enrollment {
            api_url: &args.api_url,
            secret: args.enroll_secret.as_deref().unwrap_or_default(),
            instance_id: args.instance_id.as_deref(),
            record_file: &args.enrollment_file(),
        };
        tokio::select! {
            _ = crate::enroll::enroll(&enrollment) => {}
            _ = terminate() => return 0,
        }
    }
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lablink-client-daemon: cannot start: {e}");
            return 2;
        }
    };
    tracing::info!(host = %cfg.hostname, api = %cfg.api_url, holder = %cfg.holder_url, "starting");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shipper = crate::ship_logs(&cfg, stopped);
    tokio::select! {
        r = crate::run(cfg) => {
            if let Err(e) = r {
                eprintln!("lablink-client-daemon: {e}");
                let _ = stop.send(true);
                return 1;
            }
        }
        _ = terminate() => tracing::info!("stopping"),
    }
    // Let the log shipper finish the batch in flight (and save its cursor).
    let _ = stop.send(true);
    if let Some(h) = shipper {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), h).await;
    }
    0
}

async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
