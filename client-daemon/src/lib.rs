//! The LabLink client daemon, run by systemd on each VM (see `dist/`), as root on the
//! host.
//!
//! It reports `initializing`, prepares the participant's workspace (with a client image:
//! the container, the tutorial repository, the startup script; see [`workspace`]) or
//! checks the host can serve, reports `running` (or `error` with the reason), posts its
//! start-up timings once, keeps GPU health and in-use current, and waits for its
//! assignment on the holder: on one, it runs start-host as the desktop user (see
//! [`starthost`]), starts and supervises the Chrome Remote Desktop host in the workspace
//! (see [`crd`]), reports the outcome once the host runs, and remembers that on disk
//! (see [`state`]).

pub mod api;
pub mod cli;
pub mod config;
pub mod crd;
pub mod engine;
pub mod enroll;
pub mod export;
pub mod helper;
pub mod logship;
pub mod monitor;
pub mod software;
pub mod starthost;
pub mod state;
pub mod workspace;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lablink_core::domain::{GpuHealth, VmStatus};
use lablink_wire::{RawTimings, StartHostOutcome};
use rand::Rng;

use crate::api::{Api, Poll};
use crate::config::Config;
use crate::state::{AssignmentRecord, Phase, StateDir};
use crate::workspace::{PrepError, Workspace};

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

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `user` exists on this host.
fn user_exists(user: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(user) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; the result is only compared with null (the daemon
    // calls this from one task at a time, and reads nothing through the pointer).
    unsafe { !libc::getpwnam(name.as_ptr()).is_null() }
}

/// Why this VM cannot serve a participant without a workspace, if it cannot.
fn preflight(cfg: &Config) -> Result<(), String> {
    let meta = std::fs::metadata(&cfg.start_host)
        .map_err(|e| format!("start-host {} is unusable: {e}", cfg.start_host.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "start-host {} is not an executable file",
            cfg.start_host.display()
        ));
    }
    if running_as_root() && !user_exists(&cfg.desktop_user) {
        return Err(format!(
            "the desktop user {} (LABLINK_DESKTOP_USER) does not exist on this VM",
            cfg.desktop_user
        ));
    }
    Ok(())
}

/// Whether Chrome Remote Desktop is registered already: in the workspace, or a
/// `host#*.json` in the host's CRD config directory.
async fn crd_configured(cfg: &Config, workspace: Option<&Workspace>) -> bool {
    if let Some(w) = workspace {
        return w.registered().await;
    }
    crd_configured_on_host(cfg)
}

fn crd_configured_on_host(cfg: &Config) -> bool {
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

/// The start-up timings to report: cloud-init's from its own record on the VM, then
/// what this daemon measured (the workspace's phases, or its own start-up as the
/// container phase without a workspace).
fn timings(cloud_init: &std::path::Path, mut measured: RawTimings) -> RawTimings {
    if let Some((s, e)) = workspace::cloud_init_phase(cloud_init, workspace::boot_epoch()) {
        measured.cloud_init_start = Some(rfc3339(s));
        measured.cloud_init_end = Some(rfc3339(e));
    }
    measured
}

/// Wait (up to 10 minutes) for cloud-init to finish when it is still running (the
/// daemon starts during its final stage), so its phase can be reported.
async fn cloud_init_settled(status: &std::path::Path) {
    if !status.exists() {
        return;
    }
    for _ in 0..300 {
        if workspace::cloud_init_phase(status, workspace::boot_epoch()).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tracing::warn!("cloud-init has not finished after 10 minutes; reporting the timings without it");
}

async fn post_metrics_once(api: &Api, state: &StateDir, body: RawTimings) {
    if state.has_marker(METRICS_MARKER) || body == RawTimings::default() {
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
    let state = Arc::new(StateDir::open(&cfg.state_dir)?);
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

    // The GPU goes to the workspace whenever the host has NVIDIA's tools: a check that
    // fails once (a slow first nvidia-smi) must not give the VM's container no GPU.
    let gpu_present = monitor::gpu_health(&cfg.nvidia_smi).await != GpuHealth::NotAvailable;
    let workspace = cfg
        .workspace
        .as_ref()
        .map(|w| {
            // One engine client for the daemon's life (the Docker Engine API over its
            // socket; DOCKER_HOST when it names a unix socket).
            let engine = engine::Engine::new().map_err(std::io::Error::other)?;
            let ws = Workspace::new(Arc::new(engine), w, &cfg.hostname, &cfg.desktop_user);
            // Short commands in the workspace go through a helper (`helper.rs`); without
            // one they are one exec each, as before.
            Ok::<_, std::io::Error>(Arc::new(match helper::install(&cfg.state_dir) {
                Ok(dir) => ws.with_helper(dir),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the workspace helper; one exec per command");
                    ws
                }
            }))
        })
        .transpose()?;
    let gpu = tokio::spawn({
        let (api, path, every) = (Arc::clone(&api), cfg.nvidia_smi.clone(), cfg.gpu_interval);
        let ws = workspace.clone();
        async move { monitor::gpu_loop(&api, &path, every, ws.as_deref(), gpu_present).await }
    });

    let (measured, warnings) = match &workspace {
        Some(ws) => prepare_workspace(&cfg, &api, &state, ws, gpu_present).await,
        None => {
            if let Err(reason) = preflight(&cfg) {
                tracing::error!(%reason, "cannot serve a participant");
                retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
                while preflight(&cfg).is_err() {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
            let t = RawTimings {
                container_start: Some(rfc3339(started)),
                container_end: Some(rfc3339(Utc::now())),
                ..RawTimings::default()
            };
            (t, Vec::new())
        }
    };
    let warning = (!warnings.is_empty()).then(|| warnings.join("; "));

    let inuse = cfg.subject_software.clone().map(|software| {
        let (api, every, ws) = (Arc::clone(&api), cfg.inuse_interval, workspace.clone());
        tokio::spawn(async move { monitor::inuse_loop(&api, &software, ws.as_deref(), every).await })
    });
    let supervisor = workspace.clone().map(|ws| {
        let every = cfg.inuse_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                ws.supervise().await;
            }
        })
    });
    let desktop = workspace
        .as_ref()
        .map(|ws| crd::Desktop::new(Arc::clone(ws), &cfg.start_host));
    let host_watch = desktop.as_ref().map(|d| {
        let (api, states, warning) = (Arc::clone(&api), d.watch(), warning.clone());
        tokio::spawn(async move { report_host_health(&api, states, warning.as_deref()).await })
    });

    retry("reporting running", || {
        api.status(VmStatus::Running, warning.as_deref())
    })
    .await;
    tracing::info!(host = %cfg.hostname, "running");
    let metrics = tokio::spawn({
        let (api, state, status) = (
            Arc::clone(&api),
            Arc::clone(&state),
            cfg.cloud_init_status.clone(),
        );
        async move {
            cloud_init_settled(&status).await;
            post_metrics_once(&api, &state, timings(&status, measured)).await;
        }
    });

    // The export channel: a second long-poll, open for the life of the daemon. The
    // participant's files are on the workspace's home volume when there is one.
    let mut export_cfg = cfg.clone();
    if export_cfg.export_dir.is_none()
        && let Some(ws) = &workspace
    {
        match ws.home_volume_dir().await {
            Ok(dir) => export_cfg.export_dir = Some(dir),
            Err(e) => tracing::error!(error = %e, "cannot find the workspace's home volume for data export"),
        }
    }
    let exports = tokio::spawn({
        let api = Arc::clone(&api);
        async move { export::export_loop(&export_cfg, &api).await }
    });
    assignment_loop(
        &cfg,
        &api,
        &state,
        workspace.as_deref(),
        desktop.as_deref(),
        gpu_present,
        warning.as_deref(),
    )
    .await?;
    let _ = metrics.await;
    let _ = gpu.await;
    let _ = exports.await;
    for h in [inuse, supervisor, host_watch].into_iter().flatten() {
        let _ = h.await;
    }
    Ok(())
}

/// Prepare the workspace, reporting `error` while it cannot be: retried every minute
/// when it may heal (engine, registry), never when an admin must act (a failing startup
/// script under `fail`): then the VM stays in `error`, out of the pool, for good.
async fn prepare_workspace(
    cfg: &Config,
    api: &Api,
    state: &StateDir,
    ws: &Workspace,
    gpu: bool,
) -> (RawTimings, Vec<String>) {
    let Some(wcfg) = &cfg.workspace else {
        unreachable!("a workspace exists only with its settings")
    };
    let mut env: Vec<(&str, String)> = vec![("VM_NAME", cfg.hostname.as_str().to_owned())];
    if let Some(s) = &cfg.subject_software {
        env.push(("SUBJECT_SOFTWARE", s.name().to_owned()));
    }
    if let Some(r) = &wcfg.tutorial_repo {
        env.push(("TUTORIAL_REPO_TO_CLONE", r.clone()));
    }
    env.push(("LABLINK_DESKTOP_USER", cfg.desktop_user.clone()));
    loop {
        match ws.prepare(wcfg, state, gpu, &env, &cfg.start_host).await {
            Ok(p) => return (p.timings, p.warnings),
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(%reason, "the workspace is not ready");
                retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
                match e {
                    PrepError::Retry(_) => tokio::time::sleep(Duration::from_secs(60)).await,
                    PrepError::Fatal(_) => std::future::pending::<()>().await,
                }
            }
        }
    }
}

/// How long the desktop host may stay down, while wanted, before the VM reports `error`
/// (a start, its retries and a container restart fit in it).
const HOST_DOWN_GRACE: Duration = Duration::from_secs(60);

/// The desktop host's health on the VM's status: while it is wanted but has not run for
/// [`HOST_DOWN_GRACE`] (it fails to start again and again, after the seat was ready),
/// the VM reports `error` with the reason, for the admin; `running` again once it runs.
async fn report_host_health(
    api: &Api,
    mut states: tokio::sync::watch::Receiver<(crd::HostState, u64)>,
    warning: Option<&str>,
) {
    let mut reported_down = false;
    loop {
        let state = states.borrow_and_update().0.clone();
        match state {
            crd::HostState::Running if reported_down => {
                reported_down = false;
                tracing::info!("the desktop host runs again");
                retry("reporting running", || api.status(VmStatus::Running, warning)).await;
            }
            crd::HostState::Failed(_) | crd::HostState::Starting if !reported_down => {
                // Down: unless it runs (or stops being wanted) within the grace.
                let settled = tokio::time::timeout(
                    HOST_DOWN_GRACE,
                    states.wait_for(|(s, _)| matches!(s, crd::HostState::Running | crd::HostState::Stopped)),
                )
                .await
                .is_ok();
                if !settled {
                    let why = match &states.borrow().0 {
                        crd::HostState::Failed(why) => why.clone(),
                        other => format!("{other:?}"),
                    };
                    let reason = format!("the desktop host is not running: {why}");
                    tracing::error!(%reason);
                    retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
                    reported_down = true;
                }
                continue;
            }
            _ => {}
        }
        if states.changed().await.is_err() {
            return;
        }
    }
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

/// What start-host runs and resets need besides the assignment.
struct Run<'a> {
    cfg: &'a Config,
    api: &'a Api,
    state: &'a StateDir,
    workspace: Option<&'a Workspace>,
    /// The workspace's Chrome Remote Desktop host.
    desktop: Option<&'a crd::Desktop>,
    /// The host has NVIDIA's tools: a new workspace gets the GPU.
    gpu: bool,
    /// What went wrong preparing the VM without stopping it, kept on every `running`.
    warning: Option<String>,
}

/// Wait for this VM's assignments and run each exactly once across restarts, for the
/// life of the VM: a participant's fresh code is a new assignment (start-host registers
/// the desktop again), and a released seat is a reset (a new workspace, then `running`
/// again for the next participant).
async fn assignment_loop(
    cfg: &Config,
    api: &Api,
    state: &StateDir,
    workspace: Option<&Workspace>,
    desktop: Option<&crd::Desktop>,
    gpu: bool,
    warning: Option<&str>,
) -> std::io::Result<()> {
    let mut run = Run {
        cfg,
        api,
        state,
        workspace,
        desktop,
        gpu,
        warning: warning.map(str::to_owned),
    };
    let saved = saved_assignment(state);
    if let (Some(r), Some(w)) = (&saved, workspace)
        && r.phase == Phase::Received
    {
        // The interrupted run may still be going in the workspace (killing `docker exec`
        // does not stop it): let it end before judging whether it registered.
        w.wait_until_gone(&cfg.start_host, cfg.start_host_timeout + Duration::from_secs(20))
            .await;
    }
    match saved {
        // Interrupted before its outcome was recorded. If CRD got registered meanwhile
        // (and was not before the run), the run succeeded: its one-time code must not
        // be spent again.
        Some(r)
            if r.phase == Phase::Received && !r.registered_before && crd_configured(cfg, workspace).await =>
        {
            tracing::info!("an interrupted start-host run had registered this host");
            registered(
                &run,
                r.key,
                "registered by a run the daemon's restart interrupted",
            )
            .await;
        }
        Some(r) if r.phase == Phase::Received => {
            tracing::warn!("resuming an assignment received before a restart");
            if let (Some(command), Some(pin)) = (r.command.clone(), r.pin.clone()) {
                execute(&run, r.key.clone(), &command, &pin).await;
            }
        }
        Some(r) if r.phase == Phase::Done => {
            tracing::info!(
                ok = r.succeeded(),
                "this VM's assignment was run before; waiting for a fresh code or a release"
            );
            // The registration is in the workspace's home: its host runs again (after
            // a daemon or container restart), without start-host.
            if let Some(d) = desktop.filter(|_| r.succeeded()) {
                d.want(true);
            }
        }
        Some(r) if r.phase == Phase::Registered => {
            if let Some(d) = desktop {
                d.want(true);
            }
        }
        _ => {}
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
                let saved = saved_assignment(state).filter(|r| r.key == key);
                if let Some(r) = saved.as_ref().filter(|r| r.phase == Phase::Registered) {
                    // Registered, host not seen running yet: acknowledged once it runs.
                    if run.desktop.is_some_and(|d| d.state() == crd::HostState::Running) {
                        registered(&run, r.key.clone(), "registered; the desktop host runs").await;
                        backoff.reset();
                    } else {
                        if let Some(d) = run.desktop {
                            d.want(true);
                        }
                        backoff.wait().await;
                    }
                    continue;
                }
                if saved.as_ref().is_some_and(|r| r.phase == Phase::Failed) {
                    // This VM could not run it; the admin was told. Never run it again.
                    backoff.wait().await;
                    continue;
                }
                if let Some(r) = saved.filter(|r| r.phase == Phase::Done) {
                    // Handed over again: its outcome report did not land (or a classic
                    // server repeats itself). Never run again; report the outcome again,
                    // which acknowledges it.
                    tracing::info!(
                        "the server handed over an assignment already run; reporting its outcome again"
                    );
                    report_done_again(&run, &r).await;
                    backoff.wait().await;
                    continue;
                }
                backoff.reset();
                execute(&run, key, &command, &pin).await;
            }
            Ok(Poll::Reset { id, keep_files }) => {
                backoff.reset();
                reset(&mut run, id, keep_files).await;
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
        registered_before: false,
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

/// The outcome of a finished assignment, reported again (it acknowledges it).
async fn report_done_again(run: &Run<'_>, r: &AssignmentRecord) {
    let ok = r.succeeded();
    let outcome = StartHostOutcome {
        ok,
        exit_code: None,
        output: if ok {
            String::new()
        } else {
            r.outcome.clone().unwrap_or_default()
        },
        assignment: Some(r.key.clone()),
    };
    let (status, reason) = if ok {
        (VmStatus::Running, run.warning.clone())
    } else {
        (
            VmStatus::Error,
            Some(format!(
                "start-host failed: {}",
                r.outcome.as_deref().unwrap_or("unknown")
            )),
        )
    };
    retry("reporting a start-host outcome again", || {
        run.api
            .status_after_start_host(status, reason.as_deref(), Some(&outcome))
    })
    .await;
}

/// Record, run, record the outcome, report it (naming the assignment, which
/// acknowledges it). In a workspace: stop the host (a fresh code), make the runtime
/// directory, register with start-host, then start the host; the outcome is reported
/// `ok` only once the host runs. Only a refused registration is reported as the code's
/// failure; anything else is this VM's `error`, and the assignment stays unacknowledged.
async fn execute(run: &Run<'_>, key: String, command: &str, pin: &str) {
    let (cfg, api, state) = (run.cfg, run.api, run.state);
    // A registration from an earlier success (a fresh code re-registers), carried through
    // the records of later codes that failed. Known from the record, so no look into the
    // workspace delays start-host.
    let had_registration = saved_assignment(state)
        .is_some_and(|r| r.succeeded() || r.phase == Phase::Registered || r.registered_before);
    save_or_log(
        state,
        &AssignmentRecord {
            key: key.clone(),
            phase: Phase::Received,
            command: Some(command.to_owned()),
            pin: Some(pin.to_owned()),
            outcome: None,
            registered_before: had_registration,
        },
    );
    tracing::info!(user = %cfg.desktop_user, in_workspace = run.workspace.is_some(), "assignment received; running start-host");
    // A fresh code: the running host goes before the registration is replaced.
    if let Some(d) = run.desktop
        && let Err(e) = d.stop().await
    {
        vm_failure(run, key, &e, had_registration).await;
        return;
    }
    if let Some(w) = run.workspace
        && let Err(e) = w.ensure_runtime_dir().await
    {
        vm_failure(
            run,
            key,
            &format!("the desktop user's runtime directory: {e}"),
            had_registration,
        )
        .await;
        return;
    }
    let runner = match run.workspace {
        Some(workspace) => starthost::Runner::Workspace {
            workspace,
            start_host: &cfg.start_host,
        },
        None => starthost::Runner::Host {
            start_host: &cfg.start_host,
            user_name: running_as_root().then_some(cfg.desktop_user.as_str()),
        },
    };
    match starthost::run(&runner, command, pin, &cfg.hostname, cfg.start_host_timeout).await {
        Ok(stdout) => {
            tracing::info!(output = %stdout, "start-host registered the desktop");
            if let Some(w) = run.workspace
                && !w.registered().await
            {
                vm_failure(
                    run,
                    key,
                    "start-host exited 0 but wrote no host configuration",
                    had_registration,
                )
                .await;
                return;
            }
            registered(run, key, &stdout).await;
        }
        Err(e) if e.is_refusal() => {
            tracing::error!(error = %e, "start-host: the registration was refused");
            let mut report = e.outcome();
            report.assignment = Some(key.clone());
            save_or_log(
                state,
                &AssignmentRecord {
                    registered_before: had_registration,
                    ..done(key, e.to_string())
                },
            );
            // The earlier registration is still in place (start-host writes only on
            // success): its desktop runs again meanwhile.
            if let Some(d) = run.desktop.filter(|_| had_registration) {
                d.want(true);
            }
            let reason = format!("start-host failed: {e}");
            retry("reporting error", || {
                api.status_after_start_host(VmStatus::Error, Some(&reason), Some(&report))
            })
            .await;
        }
        Err(e) => {
            vm_failure(
                run,
                key,
                &format!("start-host could not register: {e}"),
                had_registration,
            )
            .await
        }
    }
}

/// start-host registered `key`: start the desktop host, and report the assignment done
/// (acknowledged, the seat `ready`) once it runs. A host that does not start leaves the
/// assignment registered but unacknowledged, the VM in `error` for the admin; the
/// supervisor keeps trying, and the holder's next hand-over acknowledges it once the
/// host runs.
async fn registered(run: &Run<'_>, key: String, output: &str) {
    let (api, state) = (run.api, run.state);
    if let Some(d) = run.desktop {
        save_or_log(
            state,
            &AssignmentRecord {
                key: key.clone(),
                phase: Phase::Registered,
                command: None,
                pin: None,
                outcome: None,
                registered_before: false,
            },
        );
        if let Err(why) = d.start_and_wait(run.cfg.start_host_timeout).await {
            let reason = format!("the desktop host does not start: {why}");
            tracing::error!(%reason);
            retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
            return;
        }
    }
    save_or_log(state, &done(key.clone(), "ok".into()));
    let report = StartHostOutcome {
        ok: true,
        exit_code: Some(0),
        output: output.to_owned(),
        assignment: Some(key),
    };
    retry("reporting running", || {
        api.status_after_start_host(VmStatus::Running, run.warning.as_deref(), Some(&report))
    })
    .await;
}

/// The VM could not run `key` (not the participant's code): recorded as failed (never
/// run again), reported as the VM's `error` without acknowledging the assignment.
async fn vm_failure(run: &Run<'_>, key: String, reason: &str, had_registration: bool) {
    tracing::error!(%reason, "the assignment could not be run on this VM");
    save_or_log(
        run.state,
        &AssignmentRecord {
            key,
            phase: Phase::Failed,
            command: None,
            pin: None,
            outcome: Some(reason.to_owned()),
            registered_before: had_registration,
        },
    );
    // An earlier registration's desktop runs again meanwhile.
    if let Some(d) = run.desktop.filter(|_| had_registration) {
        d.want(true);
    }
    retry("reporting error", || {
        run.api.status(VmStatus::Error, Some(reason))
    })
    .await;
}

/// The admin released this VM's seat: remove the desktop's registration and the
/// participant's workspace, prepare a new one from the image, forget the assignment,
/// and report `running` naming the reset (the VM rejoins the pool). A failure is
/// reported as `error`; the reset stays pending, so the next poll brings it again.
async fn reset(run: &mut Run<'_>, id: u64, keep_files: bool) {
    let (cfg, api, state) = (run.cfg, run.api, run.state);
    tracing::info!(id, keep_files, "resetting after a release");
    if let Some(d) = run.desktop
        && let Err(e) = d.stop().await
    {
        // The container goes next, and the host with it.
        tracing::warn!(error = %e, "the desktop host did not stop before the reset");
    }
    let result = match run.workspace {
        Some(ws) => match ws.reset(state, id, keep_files).await {
            Ok(()) => {
                let (_, warnings) = prepare_workspace(cfg, api, state, ws, run.gpu).await;
                run.warning = (!warnings.is_empty()).then(|| warnings.join("; "));
                Ok(())
            }
            Err(e) => Err(e),
        },
        None => remove_host_registration(cfg),
    };
    if let Err(reason) = result.and_then(|()| {
        state
            .forget_assignment()
            .map_err(|e| format!("forgetting the assignment: {e}"))
    }) {
        let reason = format!("reset after a release failed: {reason}");
        tracing::error!(%reason);
        retry("reporting error", || api.status(VmStatus::Error, Some(&reason))).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    retry("reporting the reset done", || {
        api.status_after_reset(VmStatus::Running, run.warning.as_deref(), id)
    })
    .await;
    tracing::info!(id, "reset done; back in the pool");
}

/// Without a workspace: the registration is the host's CRD config (`host#*.json`).
fn remove_host_registration(cfg: &Config) -> Result<(), String> {
    let Some(dir) = &cfg.crd_config_dir else {
        return Ok(());
    };
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("host#") && n.ends_with(".json") {
            std::fs::remove_file(e.path())
                .map_err(|err| format!("removing {}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}
