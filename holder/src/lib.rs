//! The holder: a small always-on service that answers the VMs' long-polls
//! (`POST /vm_startup`, `POST /vm_export`). API Gateway cuts a request at about 30 s and
//! a Lambda at 15 minutes, so neither can hold a VM's request while it waits for a
//! participant or an export; the holder holds them all, multiplexed over ONE Postgres
//! connection that `LISTEN`s on `vm_updates` and `vm_exports` (see docs/architecture.md,
//! "The holder").

pub mod export;
pub mod http;
pub mod listener;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lablink_core::config::{ConfigError, Settings};
use lablink_core::domain::Hostname;
use lablink_db::{DbConfig, vms};
use tokio_util::sync::CancellationToken;

use crate::export::Exports;
use crate::listener::Link;
use crate::registry::{Delivery, Registry};

/// Settings, all from the environment.
#[derive(Clone, Debug)]
pub struct HolderConfig {
    pub db: DbConfig,
    /// `LABLINK_HOLDER_ADDR` (default `0.0.0.0:8080`).
    pub addr: SocketAddr,
    /// `LABLINK_HOLDER_DEFAULT_WAIT_SECONDS` (default 25: fits behind API Gateway's 30 s):
    /// the window of a poll without `?wait=`.
    pub default_wait: Duration,
    /// `LABLINK_HOLDER_MAX_WAIT_SECONDS` (default 900): the largest window; also the window
    /// of a legacy (credential-less) poll without `?wait=`.
    pub max_wait: Duration,
    /// `LABLINK_LEGACY_VM_AUTH` as for the functions: accept polls without a credential.
    pub legacy_vm_auth: bool,
    /// `LABLINK_HOLDER_HEARTBEAT_SECONDS` (default 10): how often the listening
    /// connection must answer a trivial query (within 5 s) to be kept.
    pub heartbeat: Duration,
    /// `LABLINK_BOOTSTRAP_DEADLINE_MINUTES` (default 20): a VM still `initializing` this
    /// long after its launch is marked `error` ("bootstrap did not finish").
    pub bootstrap_deadline: Duration,
}

impl HolderConfig {
    pub fn read(s: &mut Settings) -> Option<Self> {
        let db = DbConfig::read(s);
        let addr = s
            .optional_with("LABLINK_HOLDER_ADDR", "an address like 0.0.0.0:8080", |v| {
                v.parse::<SocketAddr>().map_err(|e| e.to_string())
            })
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
        let default_wait = s.ranged::<u64>("LABLINK_HOLDER_DEFAULT_WAIT_SECONDS", 25, 0, 86_400);
        let max_wait = s.ranged::<u64>("LABLINK_HOLDER_MAX_WAIT_SECONDS", 900, 1, 7 * 86_400);
        if default_wait > max_wait {
            s.report(
                "LABLINK_HOLDER_DEFAULT_WAIT_SECONDS",
                default_wait.to_string(),
                "at most LABLINK_HOLDER_MAX_WAIT_SECONDS",
            );
        }
        let legacy_vm_auth = s.flag("LABLINK_LEGACY_VM_AUTH", false);
        let heartbeat = s.ranged::<u64>("LABLINK_HOLDER_HEARTBEAT_SECONDS", 10, 1, 300);
        let deadline = s.ranged::<u64>("LABLINK_BOOTSTRAP_DEADLINE_MINUTES", 20, 5, 1440);
        Some(Self {
            bootstrap_deadline: Duration::from_secs(deadline * 60),
            heartbeat: Duration::from_secs(heartbeat),
            db: db?.with_application_name("lablink-holder"),
            addr,
            default_wait: Duration::from_secs(default_wait),
            max_wait: Duration::from_secs(max_wait),
            legacy_vm_auth,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let mut s = Settings::from_env();
        let cfg = Self::read(&mut s);
        s.finish(|| cfg.expect("settings without errors build"))
    }
}

/// `lablink-holder setup-db`: the deployment's database setup ([`lablink_db::roles::setup`]:
/// roles, migrations as the owner role, grants), run as the master user before the
/// holder starts (the task's `db-setup` container). Only the database settings are read;
/// the master's password comes as `PGPASSWORD` and reaches no other container.
pub fn setup_config_from_env() -> Result<DbConfig, ConfigError> {
    let mut s = Settings::from_env();
    let db = DbConfig::read(&mut s);
    s.finish(|| {
        db.expect("settings without errors build")
            .with_application_name("lablink-db-setup")
    })
}

/// Connect once and run the setup.
pub async fn setup_db(db: &DbConfig) -> Result<lablink_db::roles::SetupOutcome, lablink_db::DbError> {
    let mut client = db.connect().await?;
    lablink_db::roles::setup(&mut client).await
}

/// Everything a request handler borrows.
pub struct Holder {
    pub config: HolderConfig,
    pub registry: Arc<Registry>,
    pub link: Arc<Link>,
    /// The open export, in memory: export waiters answer from it.
    pub exports: Arc<Exports>,
    /// Cancelled at shutdown: every waiter answers 204 at once.
    pub stop: CancellationToken,
}

impl Holder {
    /// Record a delivery. Retried a few times while the connection comes back; if it
    /// still fails, the VM is handed the same assignment on its next poll (harmless: the
    /// daemon remembers what it ran).
    async fn mark_delivered(&self, host: Hostname, d: Delivery) {
        for attempt in 0..5u32 {
            if let Some(client) = self.link.client().await {
                let mark = vms::mark_delivered(&client, &host, &d.pin, &d.command);
                match self.link.query(mark).await {
                    Ok(_) => return,
                    Err(e) => tracing::warn!(error = %e, %host, attempt, "marking a delivery failed"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        tracing::error!(%host, "could not mark a delivery; the VM will be handed it again");
    }
}

/// A running holder.
pub struct Running {
    pub addr: SocketAddr,
    pub holder: Arc<Holder>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Answer every waiter with 204, stop accepting, finish in-flight responses.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.holder.stop.cancel();
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Bind, start the listening connection and serve until [`Running::shutdown`] (or the
/// token in [`Holder::stop`] is cancelled).
pub async fn start(config: HolderConfig) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let holder = Arc::new(Holder {
        link: Arc::new(Link::default()),
        registry: Arc::new(Registry::default()),
        exports: Arc::new(Exports::default()),
        stop: CancellationToken::new(),
        config,
    });
    tokio::spawn(listener::supervise(
        holder.config.db.clone(),
        holder.config.heartbeat,
        Arc::clone(&holder.link),
        Arc::clone(&holder.registry),
        Arc::clone(&holder.exports),
        holder.stop.clone(),
    ));
    tokio::spawn(export::keep_loaded(
        Arc::clone(&holder.exports),
        Arc::clone(&holder.link),
        holder.stop.clone(),
    ));
    tokio::spawn(expire_bootstraps(Arc::clone(&holder)));
    let app = http::router(Arc::clone(&holder));
    let task = tokio::spawn(serve(listener, app, holder.stop.clone()));
    Ok(Running { addr, holder, task })
}

/// Every minute (or a fifth of the deadline, if shorter): VMs whose bootstrap never
/// finished are marked `error`, so the admin sees them (the holder is the one process
/// that always runs; with two tasks the update is simply done twice). Then one
/// `"event":"vm_states"` line counts the VMs in `error` and those still `initializing`
/// past the deadline: the stack's metric filters turn it into the alarms' metrics (a
/// count, not an event, so an alarm lasts as long as the VMs are stuck; two tasks log
/// the same count and the alarms take the maximum).
async fn expire_bootstraps(holder: Arc<Holder>) {
    let deadline = holder.config.bootstrap_deadline;
    let every = (deadline / 5).clamp(Duration::from_millis(100), Duration::from_secs(60));
    // Not at start: the one connection first serves the VMs' polls (and nothing can be
    // overdue a moment after a start that a minute later would not catch).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = holder.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(client) = holder.link.client().await else {
            continue;
        };
        match holder.link.query(vms::expire_bootstraps(&client, deadline)).await {
            Ok(hosts) if !hosts.is_empty() => {
                tracing::warn!(?hosts, "VMs whose bootstrap did not finish marked error");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checking bootstrap deadlines failed"),
        }
        match holder.link.query(vms::stuck_counts(&client, deadline)).await {
            Ok(c) => tracing::info!(
                event = "vm_states",
                in_error = c.error,
                initializing_overdue = c.initializing_overdue,
                "VMs that need the admin"
            ),
            Err(e) => tracing::warn!(error = %e, "counting VMs in error failed"),
        }
    }
}

/// The accept loop: HTTP/1.1 only (what the VMs and the load balancer speak). Each
/// connection is a small task: the waiting VMs multiply its size, and the HTTP/1 + HTTP/2
/// auto-detecting connection of `axum::serve` was twice as large per waiter
/// (docs/performance.md).
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that does not finish sending its request head in 30 s is dropped.
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    // Waiting VMs send nothing while they wait: TCP keepalive finds the ones that
    // vanished without a FIN (terminated instances) and frees their sockets.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: keep serving the ones we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Waiters have answered 204 (they watch `stop`); let in-flight responses finish and
    // close idle keep-alive connections.
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open 10 s after shutdown began; exiting anyway");
        }
    }
    Ok(())
}
