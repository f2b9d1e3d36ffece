//! The LabLink client daemon, run by systemd on each VM (see `dist/`).
//!
//! It reports `initializing`, checks it can do its job, reports `running` (or `error`
//! with the reason), posts its start-up timings once, keeps GPU health and in-use
//! current, and waits for its assignment on the holder: on one, it runs start-host
//! (see [`starthost`]) and remembers that on disk (see [`state`]).

pub mod api;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod export;
pub mod logship;
pub mod monitor;
pub mod starthost;
pub mod state;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lablink_core::domain::VmStatus;
use lablink_wire::RawTimings;
use rand::Rng;

use crate::api::{Api, Poll};
use crate::config::Config;
use crate::state::{AssignmentRecord, Phase, StateDir};

const METRICS_MARKER: &str = "metrics-posted";
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Capped exponential backoff with jitter (so a fleet does not retry in step).
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            next: Duration::from_millis(500),
        }
    }

    pub fn reset(&mut self) {
        *self = Self::new();
    }

    pub async fn wait(&mut self) {
        let d = self.next.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        self.next = (self.next * 2).min(MAX_BACKOFF);
        tokio::time::sleep(d).await;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Retry `f` until it succeeds; the daemon never gives up on the server.
async fn retry<F, Fut, T>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, api::ApiError>>,
{
    let mut b = Backoff::new();
    loop {
        match f().await {
            Ok(t) => return t,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                b.wait().await;
            }
        }
    }
}

/// Why this VM cannot serve a participant, if it cannot.
fn preflight(cfg: &Config) -> Result<(), String> {
    let meta = std::fs::metadata(&cfg.start_host)
        .map_err(|e| format!("start-host {} is unusable: {e}", cfg.start_host.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "start-host {} is not an executable file",
            cfg.start_host.display()
        ));
    }
    Ok(())
}

/// A `host#*.json` in CRD's config directory: this host is registered already.
fn crd_configured(cfg: &Config) -> bool {
    let Some(dir) = &cfg.crd_config_dir else {
        return false;
    };
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("host#") && n.ends_with(".json")
        })
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The start-up timings: cloud-init's from the file user-data wrote (if any); the
/// container phase is this daemon's own start-up unless the file has one.
fn timings(file: &std::path::Path, started: DateTime<Utc>, ready: DateTime<Utc>) -> RawTimings {
    let mut t = match std::fs::read(file) {
        // An object only: serde would also read a JSON array, by position.
        Ok(b) => match serde_json::from_slice::<RawTimings>(&b) {
            Ok(t) if b.trim_ascii_start().starts_with(b"{") => t,
            _ => {
                tracing::warn!(file = %file.display(), "timings file is not a JSON object of timestamps; ignoring it");
                RawTimings::default()
            }
        },
        Err(_) => RawTimings::default(),
    };
    // `container_ready`, the classic name, is read as `container_end`.
    if t.container_start.is_none() && t.container_end.is_none() {
        t.container_start = Some(rfc3339(started));
        t.container_end = Some(rfc3339(ready));
    }
    t
}

async fn post_metrics_once(api: &Api, state: &StateDir, body: RawTimings) {
    if state.has_marker(METRICS_MARKER) {
        return;
    }
    let mut b = Backoff::new();
    loop {
        match api.metrics(&body).await {
            Ok(()) => {
                tracing::info!("start-up timings reported");
                if let Err(e) = state.set_marker(METRICS_MARKER) {
                    tracing::warn!(error = %e, "cannot record that timings were posted");
                }
                return;
            }
            Err(e) if e.is_client_error() => {
                tracing::error!(error = %e, "the server refused the start-up timings; not retrying");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot report start-up timings; retrying");
                b.wait().await;
            }
        }
    }
}

/// Start shipping the configured log files until `stop` turns true (the handle ends
/// once the batch in flight is accepted).
pub fn ship_logs(
    cfg: &Config,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let sources = cfg.ship_logs.clone();
    let cursor = cfg.state_dir.join("log-cursor.json");
    if let Err(e) = std::fs::create_dir_all(&cfg.state_dir) {
        tracing::warn!(error = %e, "cannot create the state dir; logs are not shipped");
        return None;
    }
    let stream = cfg.hostname.as_str().to_owned();
    let sink: Box<dyn logship::Sink> = match &cfg.log_sink {
        config::LogSink::None => return None,
        config::LogSink::Http { group } => Box::new(logship::HttpSink::new(
            &cfg.api_url,
            cfg.credential.clone(),
            group,
            &stream,
        )),
        config::LogSink::CloudWatch { group } => {
            let group = group.clone();
            return Some(tokio::spawn(async move {
                let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                let sink =
                    logship::CloudWatchSink::new(aws_sdk_cloudwatchlogs::Client::new(&sdk), &group, &stream);
                logship::run(sources, &sink, cursor, Duration::from_secs(1), stop).await;
            }));
        }
    };
    Some(tokio::spawn(async move {
        logship::run(sources, sink.as_ref(), cursor, Duration::from_secs(1), stop).await;
    }))
}

/// Run the daemon until the process is stopped.
pub async fn run(cfg: Config) -> std::io::Result<()> {
    let state = StateDir::open(&cfg.state_dir)?;
    let api = Arc::new(Api::new(&cfg));
    if cfg.credential.is_none() {
        tracing::warn!(
            "no VM credential configured: making classic unauthenticated calls (legacy mode only)"
        );
    }
    let started = Utc::now();
    retry("reporting initializing", || {
        api.status(VmStatus::Initializing, None)
    })
    .await;

    let gpu = tokio::spawn({
        let (api, path, every) = (Arc::clone(&api), cfg.nvidia_smi.clone(), cfg.gpu_interval);
        async move { monitor::gpu_loop(&api, &path, every).await }
    });
    let inuse = cfg.subject_software.clone().map(|name| {
        let (api, every) = (Arc::clone(&api), cfg.inuse_interval);
        tokio::spawn(async move { monitor::inuse_loop(&api, &name, every).await })
    });

    if let Err(reason) = preflight(&cfg) {
        tracing::error!(%reason, "cannot serve a participant");
        retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
        while preflight(&cfg).is_err() {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    retry("reporting running", || api.status(VmStatus::Running, None)).await;
    let ready = Utc::now();
    tracing::info!(host = %cfg.hostname, "running");
    let body = timings(&cfg.timings_file, started, ready);
    post_metrics_once(&api, &state, body).await;

    // The export channel: a second long-poll, open for the life of the daemon.
    let exports = tokio::spawn({
        let (api, cfg) = (Arc::clone(&api), cfg.clone());
        async move { export::export_loop(&cfg, &api).await }
    });
    assignment_loop(&cfg, &api, &state).await?;
    // Registered: the monitors go on for the life of the VM.
    let _ = gpu.await;
    let _ = exports.await;
    if let Some(h) = inuse {
        let _ = h.await;
    }

    Ok(())
}

/// The saved assignment record; an unreadable one is moved aside (and logged) rather
/// than stopping the daemon at every start.
fn saved_assignment(state: &StateDir) -> Option<AssignmentRecord> {
    match state.assignment() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the saved assignment record is unreadable; moving it aside");
            if let Err(e) = state.quarantine_assignment() {
                tracing::error!(error = %e, "cannot move the unreadable record aside");
            }
            None
        }
    }
}

/// Wait for this VM's assignment and run it, exactly once across restarts.
async fn assignment_loop(cfg: &Config, api: &Api, state: &StateDir) -> std::io::Result<()> {
    match saved_assignment(state) {
        // Interrupted before its outcome was recorded. If CRD got registered meanwhile,
        // the run succeeded: its one-time code must not be spent again.
        Some(r) if r.phase == Phase::Received && crd_configured(cfg) => {
            tracing::info!("an interrupted start-host run had registered this host; recording it as done");
            save_or_log(state, &done(r.key, "ok".into()));
            return Ok(());
        }
        Some(r) if r.phase == Phase::Received => {
            tracing::warn!("resuming an assignment received before a restart");
            if let (Some(command), Some(pin)) = (r.command.clone(), r.pin.clone())
                && execute(cfg, api, state, r.key.clone(), &command, &pin).await
            {
                return Ok(());
            }
        }
        Some(r) if r.succeeded() => {
            tracing::info!("this VM's assignment was run before; not waiting for another");
            return Ok(());
        }
        _ => {}
    }
    if crd_configured(cfg) {
        tracing::info!(
            "Chrome Remote Desktop is already configured on this host; not waiting for an assignment"
        );
        return Ok(());
    }
    let mut backoff = Backoff::new();
    loop {
        let asked = std::time::Instant::now();
        match api.poll().await {
            Ok(Poll::NothingYet) => {
                // A window that ended at once (a holder shutting down, another poller
                // with this hostname) must not turn into a hot loop.
                if asked.elapsed() < Duration::from_secs(1) {
                    backoff.wait().await;
                } else {
                    backoff.reset();
                }
            }
            Ok(Poll::Assigned { command, pin }) => {
                let key = AssignmentRecord::key_of(cfg.hostname.as_str(), &pin, &command);
                if saved_assignment(state).is_some_and(|r| r.key == key && r.phase == Phase::Done) {
                    // A server that hands a finished assignment back (a classic one, or
                    // ours before its delivery mark landed): not again, and not in a loop.
                    tracing::info!("the server handed over an assignment already run; ignoring it");
                    backoff.wait().await;
                    continue;
                }
                backoff.reset();
                if execute(cfg, api, state, key, &command, &pin).await {
                    return Ok(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for an assignment failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

fn done(key: String, outcome: String) -> AssignmentRecord {
    AssignmentRecord {
        key,
        phase: Phase::Done,
        command: None,
        pin: None,
        outcome: Some(outcome),
    }
}

/// Saving the record must not cost the participant their VM: if the disk refuses, the
/// run goes ahead (a restart might then repeat it, which the holder's delivery mark and
/// CRD's own check make unlikely) and the failure is logged loudly.
fn save_or_log(state: &StateDir, r: &AssignmentRecord) {
    if let Err(e) = state.save_assignment(r) {
        tracing::error!(error = %e, "cannot record the assignment on disk");
    }
}

/// Record, run, record the outcome, report it. True when start-host succeeded.
async fn execute(cfg: &Config, api: &Api, state: &StateDir, key: String, command: &str, pin: &str) -> bool {
    save_or_log(
        state,
        &AssignmentRecord {
            key: key.clone(),
            phase: Phase::Received,
            command: Some(command.to_owned()),
            pin: Some(pin.to_owned()),
            outcome: None,
        },
    );
    tracing::info!("assignment received; running start-host");
    let result = starthost::run(
        &cfg.start_host,
        command,
        pin,
        &cfg.hostname,
        cfg.start_host_timeout,
    )
    .await;
    let outcome = match &result {
        Ok(stdout) => {
            tracing::info!(output = %stdout, "start-host succeeded");
            "ok".to_owned()
        }
        Err(e) => {
            tracing::error!(error = %e, "start-host failed");
            e.to_string()
        }
    };
    save_or_log(state, &done(key, outcome.clone()));
    match result {
        Ok(_) => {
            retry("reporting running", || api.status(VmStatus::Running, None)).await;
            true
        }
        Err(_) => {
            let reason = format!("start-host failed: {outcome}");
            retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timings_file_keeps_its_container_phase_and_gets_the_daemons_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("timings.json");
        let started = "2025-11-13T10:06:00Z".parse().unwrap();
        let ready = "2025-11-13T10:06:02.5Z".parse().unwrap();
        let ours = (
            Some("2025-11-13T10:06:00.000Z".to_owned()),
            Some("2025-11-13T10:06:02.500Z".to_owned()),
        );

        // No file: the daemon's own start-up only.
        let t = timings(&file, started, ready);
        assert_eq!((t.container_start, t.container_end), ours.clone());
        assert_eq!(t.cloud_init_start, None);

        // Cloud-init's phase is kept, the container phase is the daemon's.
        std::fs::write(
            &file,
            r#"{"cloud_init_start":"2025-11-13T10:00:00Z","cloud_init_end":"2025-11-13T10:05:30Z"}"#,
        )
        .unwrap();
        let t = timings(&file, started, ready);
        assert_eq!(t.cloud_init_end.as_deref(), Some("2025-11-13T10:05:30Z"));
        assert_eq!((t.container_start, t.container_end), ours.clone());

        // A container phase in the file (by its classic name too) is not replaced.
        std::fs::write(&file, r#"{"container_ready":"2025-11-13T10:05:30Z"}"#).unwrap();
        let t = timings(&file, started, ready);
        assert_eq!(t.container_start, None);
        assert_eq!(t.container_end.as_deref(), Some("2025-11-13T10:05:30Z"));

        // Not an object of timestamps: ignored.
        for bad in ["[]", "not json", r#"{"cloud_init_start":12}"#] {
            std::fs::write(&file, bad).unwrap();
            let t = timings(&file, started, ready);
            assert_eq!(t.cloud_init_start, None, "{bad}");
            assert_eq!((t.container_start, t.container_end), ours.clone(), "{bad}");
        }
    }
}
