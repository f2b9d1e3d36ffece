//! The holder's ONE Postgres connection: it `LISTEN`s on `vm_updates`, routes each
//! notification to the waiter of its hostname, hands `vm_exports` notifications to the
//! in-memory open export ([`crate::export`]), and also carries the holder's few queries
//! (credential check, undelivered-assignment look-up, delivery marks, export loads),
//! pipelined.
//!
//! When the connection drops, the supervisor reconnects with capped, jittered backoff,
//! listens again, and only then re-checks the database for every current waiter and
//! reloads the open export, so an assignment or export committed during the gap is still
//! delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lablink_core::domain::{Hostname, Pin};
use lablink_db::{DbConfig, vms};
use rand::Rng;
use tokio::sync::{RwLock, watch};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::export::Exports;
use crate::registry::{Delivery, Handout, Registry};

pub const CHANNEL: &str = "vm_updates";
/// An admin released a VM: `{"HostName","Reset","KeepFiles"}` (`lablink_db::seats`).
pub const RESET_CHANNEL: &str = "vm_resets";
use lablink_db::exports::CHANNEL as EXPORT_CHANNEL;

/// The connection as the request handlers see it.
#[derive(Default)]
pub struct Link {
    client: RwLock<Option<Arc<Client>>>,
    /// Counts (re)connections: `/healthz` reports it, tests wait on it.
    generation: watch::Sender<u64>,
    /// Counts the statements sent through [`Link::query`] (all of the holder's):
    /// `/healthz` reports it, the benchmark and tests read it.
    queries: AtomicU64,
}

impl Link {
    /// The live client, if the connection is up and listening.
    pub async fn client(&self) -> Option<Arc<Client>> {
        self.client.read().await.clone()
    }

    pub async fn is_up(&self) -> bool {
        self.client.read().await.is_some()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Run one statement of the holder, counted, with its time limit: a silent
    /// connection answers an error, not never.
    pub async fn query<T>(
        &self,
        q: impl std::future::Future<Output = Result<T, lablink_db::DbError>>,
    ) -> Result<T, String> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(QUERY_TIMEOUT, q).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer from the database in time".into()),
        }
    }

    /// Statements sent since start (heartbeats included).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

/// The classic payload (seed 000 §3): `{"HostName","CrdCommand","Pin"}`.
#[derive(serde::Deserialize)]
struct Payload {
    #[serde(rename = "HostName")]
    host: String,
    #[serde(rename = "CrdCommand")]
    command: String,
    #[serde(rename = "Pin")]
    pin: String,
}

#[derive(serde::Deserialize)]
struct ResetPayload {
    #[serde(rename = "HostName")]
    host: String,
    #[serde(rename = "Reset")]
    id: i64,
    #[serde(rename = "KeepFiles")]
    keep_files: bool,
}

fn parse_reset(payload: &str) -> Option<(Hostname, Handout)> {
    let p: ResetPayload = serde_json::from_str(payload).ok()?;
    Some((
        Hostname::parse(&p.host).ok()?,
        Handout::Reset {
            id: p.id,
            keep_files: p.keep_files,
        },
    ))
}

fn parse_payload(payload: &str) -> Option<(Hostname, Delivery)> {
    let p: Payload = serde_json::from_str(payload).ok()?;
    Some((
        Hostname::parse(&p.host).ok()?,
        Delivery {
            command: p.command,
            pin: Pin::parse(&p.pin).ok()?,
        },
    ))
}

/// Keep the listening connection up until `stop` is cancelled.
pub async fn supervise(
    db: DbConfig,
    heartbeat_every: Duration,
    link: Arc<Link>,
    registry: Arc<Registry>,
    exports: Arc<Exports>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(10);
    loop {
        let attempt = async {
            let (client, mut conn) = db.connect_raw().await?;
            // Drive the connection: query replies are handled inside; notifications come
            // out here. Ends when the connection breaks.
            let routed = Arc::clone(&registry);
            let export_notices = Arc::clone(&exports);
            let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<String>();
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                let reason = loop {
                    match messages.next().await {
                        Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                            match parse_payload(n.payload()) {
                                Some((host, delivery)) => {
                                    let woke = routed.deliver(&host, Handout::Assignment(delivery));
                                    tracing::debug!(%host, woke, "assignment notification");
                                }
                                None => tracing::warn!("ignoring a malformed vm_updates payload"),
                            }
                        }
                        Some(Ok(AsyncMessage::Notification(n))) if n.channel() == RESET_CHANNEL => {
                            match parse_reset(n.payload()) {
                                Some((host, reset)) => {
                                    let woke = routed.deliver(&host, reset);
                                    tracing::debug!(%host, woke, "reset notification");
                                }
                                None => tracing::warn!("ignoring a malformed vm_resets payload"),
                            }
                        }
                        // An export opened or closed (a load), or a VM answered (struck from
                        // memory here, before any later message of this connection is read:
                        // a poll whose credential check follows the answer sees it).
                        Some(Ok(AsyncMessage::Notification(n))) if n.channel() == EXPORT_CHANNEL => {
                            export_notices.notice(n.payload());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break e.to_string(),
                        None => break "closed by the server".to_owned(),
                    }
                };
                let _ = ended_tx.send(reason);
            });
            let driver = AbortOnDrop(driver);
            client
                .batch_execute(&format!(
                    "LISTEN {CHANNEL}; LISTEN {RESET_CHANNEL}; LISTEN {EXPORT_CHANNEL}"
                ))
                .await?;
            Ok::<_, lablink_db::DbError>((Arc::new(client), ended_rx, driver))
        };
        let result = tokio::select! {
            r = attempt => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok((client, ended, driver)) => {
                *link.client.write().await = Some(Arc::clone(&client));
                link.generation.send_modify(|g| *g += 1);
                tracing::info!(generation = link.generation(), "listening on {CHANNEL}");
                backoff = Duration::from_millis(100);
                recheck_waiters(&link, &client, &registry).await;
                // The export too: one opened, closed or answered during the gap.
                exports.reload();
                let reason = tokio::select! {
                    r = ended => r.unwrap_or_else(|_| "connection task ended".into()),
                    r = heartbeat(&link, &client, heartbeat_every) => r,
                    () = stop.cancelled() => return,
                };
                *link.client.write().await = None;
                // A connection that went silent (failover, a dropped NAT mapping) never
                // ends by itself: close it so nothing keeps waiting on it.
                drop(driver);
                tracing::error!(%reason, waiters = registry.len(), "lost the listening connection; reconnecting");
            }
            Err(e) => tracing::error!(error = %e, ?backoff, "cannot connect the listening connection"),
        }
        let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        tokio::select! {
            () = tokio::time::sleep(jittered) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Aborts the connection's task (closing its socket) when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long any query of the holder may take before the holder gives up on it.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns (with the reason) once the connection fails to answer a trivial query in time:
/// TCP alone can take many minutes to notice a peer that vanished.
async fn heartbeat(link: &Link, client: &Client, every: Duration) -> String {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let ping = async { client.simple_query("SELECT 1").await.map_err(Into::into) };
        if let Err(e) = link.query(ping).await {
            return format!("heartbeat failed: {e}");
        }
    }
}

/// After (re)connecting: anything assigned while no one was listening is handed over now.
async fn recheck_waiters(link: &Link, client: &Client, registry: &Registry) {
    let hosts = registry.hosts();
    if hosts.is_empty() {
        return;
    }
    match link.query(vms::pending_for_many(client, &hosts)).await {
        Ok(found) => {
            let n = found.len();
            for (host, p) in found {
                registry.deliver(&host, p.into());
            }
            tracing::info!(
                waiters = hosts.len(),
                delivered = n,
                "re-checked waiters after connecting"
            );
        }
        // The connection broke again; the next reconnect re-checks.
        Err(e) => tracing::error!(error = %e, "re-checking waiters failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_only_when_complete_and_valid() {
        let (h, d) =
            parse_payload(r#"{"HostName":"vm-1","CrdCommand":"start-host --code=x","Pin":"123456"}"#)
                .unwrap();
        assert_eq!(h.as_str(), "vm-1");
        assert_eq!(d.pin.as_str(), "123456");
        assert!(parse_payload(r#"{"HostName":"vm-1","CrdCommand":"c","Pin":"12"}"#).is_none());
        assert!(parse_payload(r#"{"HostName":"bad host","CrdCommand":"c","Pin":"123456"}"#).is_none());
        assert!(parse_payload("not json").is_none());
        let (h, r) = parse_reset(r#"{"HostName":"vm-2","Reset":7,"KeepFiles":true}"#).unwrap();
        assert_eq!(h.as_str(), "vm-2");
        assert_eq!(
            r,
            Handout::Reset {
                id: 7,
                keep_files: true
            }
        );
        assert!(parse_reset(r#"{"HostName":"vm-2","Reset":"x","KeepFiles":true}"#).is_none());
    }
}
