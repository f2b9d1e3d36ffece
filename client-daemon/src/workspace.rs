//! The participant's workspace: ONE long-lived container per VM, run from the client
//! image on the host's Docker engine (through its API: [`crate::engine`]), as the classic system
//! did (seed 003 §3, seed 004 §4.5), but prepared and supervised by this daemon.
//!
//! Owns: pulling the image (with retries), creating the container (labelled
//! `lablink.hostname=<host>`, host network, the GPU when the host has one, a restart
//! policy, `/home` on a named volume so a new or restarted container keeps the
//! participant's files and Chrome Remote Desktop registration), cloning the tutorial
//! repository as the desktop user, running the admin's startup script once per
//! container, and running commands in it as the desktop user (start-host). What was done
//! for which container is kept in `<state-dir>/workspace.json`, so a restarted daemon
//! neither clones nor runs the script again, and remembers a script that failed.
//!
//! Must not: run the image's own entrypoint (the classic services would poll the server
//! without a credential; the container's command is a plain `sleep` under Docker's
//! init), run anything in it as root but the admin's startup script, or pass a value
//! through a shell.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bollard::container::{Config, LogOutput};
use bollard::models::{DeviceRequest, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lablink_core::domain::Hostname;
use lablink_wire::RawTimings;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub use crate::engine::ContainerState;
use crate::engine::{Engine, ExecOutput, ExecSpec};
use crate::helper::{Helper, HelperError};

use crate::config::{OnError, WorkspaceConfig};
use crate::state::StateDir;

const RECORD: &str = "workspace.json";
/// Where the startup script is copied in the container (a directory every image has).
const SCRIPT_DIR: &str = "/tmp";
const SCRIPT_NAME: &str = "lablink-startup-script";
const MAX_SCRIPT_BYTES: u64 = 1024 * 1024;
const REPORTED_LINES: usize = 15;
/// The group Chrome Remote Desktop's host users belong to (its .deb's own group; newer
/// postinst scripts no longer create it, so images do: talmolab/lablink a1a5c0aa).
pub const CRD_GROUP: &str = "chrome-remote-desktop";
/// The session Chrome Remote Desktop starts for every user without
/// `~/.chrome-remote-desktop-session` (linux_me2me_host.py).
pub const SESSION_FILE: &str = "/etc/chrome-remote-desktop-session";

/// Chrome Remote Desktop's host script, beside start-host in the same install.
pub fn crd_host_script(start_host: &Path) -> PathBuf {
    start_host.with_file_name("chrome-remote-desktop")
}

/// Why the workspace is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepError {
    /// Worth trying again later (the engine or the registry was unreachable).
    #[error("{0}")]
    Retry(String),
    /// Stays until an admin acts (a failing startup script under `fail`, an image
    /// without the desktop user or start-host).
    #[error("{0}")]
    Fatal(String),
}

/// A prepared workspace: the timings of what was done now, and what went wrong without
/// stopping it (a clone or a startup script that failed under `continue`).
#[derive(Debug, Default)]
pub struct Prepared {
    pub timings: RawTimings,
    pub warnings: Vec<String>,
}

/// What was done for which container, across daemon restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    container_id: String,
    /// The clone and the startup script ran (whatever their outcome under `continue`).
    #[serde(default)]
    prepared: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// Why this container can never serve (a failing startup script under `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    /// The startup script was started in this container (kept before it runs, so a
    /// daemon restart never runs it a second time).
    #[serde(default)]
    script_started: bool,
}

pub struct Workspace {
    engine: Arc<Engine>,
    image: String,
    host: Hostname,
    user: String,
    name: String,
    volume: String,
    labels: Vec<String>,
    user_info: OnceLock<UserInfo>,
    /// The container start (`StartedAt`) the runtime directory was last made for.
    runtime_dir_for: std::sync::Mutex<Option<String>>,
    /// The helper's directory on this host, mounted read-only in the container.
    helper_dir: Option<PathBuf>,
    /// The helper running in the container, if any (`crate::helper`).
    helper: tokio::sync::Mutex<HelperSlot>,
}

/// The workspace helper of the current container start.
#[derive(Default)]
struct HelperSlot {
    running: Option<Arc<Helper>>,
    /// The container start (`StartedAt`) a helper was last tried for.
    tried_for: Option<String>,
}

/// The desktop user as the image's `/etc/passwd` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl UserInfo {
    /// Its runtime directory, as logind would make it (`/run/user/<uid>`); Chrome
    /// Remote Desktop 148 aborts without it (talmolab/lablink e25ef87b).
    pub fn runtime_dir(&self) -> String {
        format!("/run/user/{}", self.uid)
    }
}

/// Capabilities the workspace is started without: none of them is needed by the
/// desktop, Chrome Remote Desktop or the daemon's own root steps in the container
/// (creating the runtime directory needs CHOWN, removing a registration DAC_OVERRIDE
/// and FOWNER, a root startup script's package installs SETUID/SETGID/FSETID/SETFCAP),
/// and each one widens what a process that became root could do.
pub const DROPPED_CAPABILITIES: [&str; 5] = ["AUDIT_WRITE", "MKNOD", "NET_RAW", "SETPCAP", "SYS_CHROOT"];

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The last lines of `text`, for a report.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let t = lines[lines.len().saturating_sub(n)..].join("\n");
    let count = t.chars().count();
    t.chars().skip(count.saturating_sub(900)).collect()
}

/// The directory a repository is cloned into, as `git clone` names it.
pub fn clone_dir_name(repo: &str) -> String {
    let last = repo
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let name = last.strip_suffix(".git").unwrap_or(last);
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        name.to_owned()
    } else {
        "tutorial".to_owned()
    }
}

impl Workspace {
    pub fn new(engine: Arc<Engine>, cfg: &WorkspaceConfig, host: &Hostname, user: &str) -> Self {
        Self {
            engine,
            image: cfg.image.clone(),
            host: host.clone(),
            user: user.to_owned(),
            name: format!("lablink-workspace-{host}"),
            volume: format!("lablink-home-{host}"),
            labels: cfg.labels.clone(),
            user_info: OnceLock::new(),
            runtime_dir_for: std::sync::Mutex::new(None),
            helper_dir: None,
            helper: tokio::sync::Mutex::new(HelperSlot::default()),
        }
    }

    /// Run short commands through a helper from `dir` (see [`crate::helper::install`]),
    /// mounted read-only in containers this daemon creates.
    pub fn with_helper(mut self, dir: PathBuf) -> Self {
        self.helper_dir = Some(dir);
        self
    }

    /// The container's name (`lablink-workspace-<hostname>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The desktop user's home in the container (known once the container runs).
    pub fn home(&self) -> String {
        self.user_info
            .get()
            .map(|u| u.home.clone())
            .unwrap_or_else(|| format!("/home/{}", self.user))
    }

    /// The desktop user's uid, gid and home, once the container ran.
    pub fn user_info(&self) -> Option<&UserInfo> {
        self.user_info.get()
    }

    /// The desktop user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The engine answers (it may start after this daemon at boot: retried a minute).
    async fn engine_ready(&self) -> Result<(), PrepError> {
        let mut last = String::new();
        for _ in 0..30 {
            match tokio::time::timeout(Duration::from_secs(20), self.engine.ready()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = "no answer within 20 s".into(),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Err(PrepError::Retry(format!(
            "the Docker engine does not answer: {last}"
        )))
    }

    /// The container, if it exists.
    pub async fn state(&self) -> Result<Option<ContainerState>, String> {
        tokio::time::timeout(Duration::from_secs(30), self.engine.inspect(&self.name))
            .await
            .unwrap_or_else(|_| Err("the engine did not answer within 30 s".into()))
    }

    /// Make the image present: kept when it is on the host, else pulled with retries.
    async fn pull(&self, attempts: u32) -> Result<(), PrepError> {
        if self.engine.image_present(&self.image).await {
            tracing::info!(image = %self.image, "the client image is on this host");
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 1..=attempts {
            tracing::info!(image = %self.image, attempt, "pulling the client image");
            let pulled = tokio::time::timeout(Duration::from_secs(30 * 60), self.engine.pull(&self.image))
                .await
                .unwrap_or_else(|_| Err("did not finish within 30 minutes".into()));
            match pulled {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "pulling the client image failed");
                    last = e;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_secs((1u64 << attempt.min(5)).min(30))).await;
            }
        }
        Err(PrepError::Retry(format!(
            "cannot pull the client image {} ({attempts} attempts): {last}",
            self.image
        )))
    }

    /// The workspace container's settings (as `docker run` would have them: labelled,
    /// host network, restart policy, Docker's init, no-new-privileges, capabilities
    /// dropped, the home on its volume, the GPU when asked).
    pub fn container_config(&self, gpu: bool, env: &[(&str, String)]) -> Config<String> {
        let mut labels = HashMap::from([("lablink.hostname".to_owned(), self.host.to_string())]);
        for l in &self.labels {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            labels.insert(k.to_owned(), v.to_owned());
        }
        let host_config = HostConfig {
            network_mode: Some("host".into()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            // Docker's init reaps what start-host and the desktop leave behind.
            init: Some(true),
            // Neither sudo nor any set-uid program in the image makes the desktop user
            // root (the kernel ignores set-uid bits under no_new_privs).
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(DROPPED_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
            // Browsers keep their renderers' memory in /dev/shm; Docker's 64 MB makes
            // tabs crash.
            shm_size: Some(1 << 30),
            binds: Some(
                std::iter::once(format!("{}:/home", self.volume))
                    .chain(
                        self.helper_dir
                            .iter()
                            .map(|d| format!("{}:{}:ro", d.display(), crate::helper::MOUNT_DIR)),
                    )
                    .collect(),
            ),
            // `--gpus all`.
            device_requests: gpu.then(|| {
                vec![DeviceRequest {
                    driver: Some(String::new()),
                    count: Some(-1),
                    capabilities: Some(vec![vec!["gpu".into()]]),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        };
        Config {
            image: Some(self.image.clone()),
            // Not the image's entrypoint (its classic services): a process that only waits.
            entrypoint: Some(vec!["sleep".into()]),
            cmd: Some(vec!["infinity".into()]),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn create(&self, gpu: bool, env: &[(&str, String)]) -> Result<(), PrepError> {
        let config = self.container_config(gpu, env);
        tokio::time::timeout(
            Duration::from_secs(120),
            self.engine.create_and_start(&self.name, config),
        )
        .await
        .unwrap_or_else(|_| Err("did not finish within 120 s".into()))
        .map_err(|e| PrepError::Retry(format!("cannot start the workspace container: {e}")))
    }

    /// Find the desktop user's home (and that the user exists).
    async fn resolve_home(&self) -> Result<String, PrepError> {
        let out = self
            .exec_as_root(&["getent", "passwd", &self.user], Duration::from_secs(30))
            .await
            .map_err(|e| {
                PrepError::Fatal(format!(
                    "the client image has no user {} (LABLINK_DESKTOP_USER): {e}",
                    self.user
                ))
            })?;
        let line = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = line.trim().split(':').collect();
        let home = fields.get(5).copied().unwrap_or_default().to_owned();
        if !home.starts_with('/') {
            return Err(PrepError::Fatal(format!(
                "the client image's user {} has no home directory",
                self.user
            )));
        }
        let (Some(Ok(uid)), Some(Ok(gid))) = (
            fields.get(2).map(|f| f.parse::<u32>()),
            fields.get(3).map(|f| f.parse::<u32>()),
        ) else {
            return Err(PrepError::Fatal(format!(
                "the client image's passwd entry for {} is malformed: {}",
                self.user,
                line.trim()
            )));
        };
        if uid == 0 {
            return Err(PrepError::Fatal(format!(
                "the client image's desktop user {} is root (uid 0)",
                self.user
            )));
        }
        let _ = self.user_info.set(UserInfo {
            uid,
            gid,
            home: home.clone(),
        });
        Ok(home)
    }

    /// `argv` as the desktop user in its home, with `env`. The desktop user's own
    /// `USER`, `LOGNAME`, `HOME` and `XDG_RUNTIME_DIR` are always set: Chrome Remote
    /// Desktop 148 aborts on a `$USER` that is not the running user, or without its
    /// runtime directory (talmolab/lablink 566cda91, e25ef87b).
    pub fn as_user(&self, env: &[(&str, &str)], argv: &[String]) -> ExecSpec {
        let home = self.home();
        let mut vars = vec![
            format!("HOME={home}"),
            format!("USER={}", self.user),
            format!("LOGNAME={}", self.user),
        ];
        if let Some(u) = self.user_info.get() {
            vars.push(format!("XDG_RUNTIME_DIR={}", u.runtime_dir()));
        }
        vars.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        ExecSpec {
            user: self.user.clone(),
            workdir: Some(home),
            env: vars,
            cmd: argv.to_vec(),
            stdin: None,
        }
    }

    /// Run `spec` in the workspace to its end (up to `limit`); its exit code and output.
    /// Through the workspace's helper when it runs (a line on a pipe), else as one exec.
    pub async fn exec(&self, spec: ExecSpec, limit: Duration) -> Result<ExecOutput, String> {
        // Starting the helper is bounded (a stalled engine falls back to one exec, which
        // has `limit` of its own).
        let helper = tokio::time::timeout(Duration::from_secs(15), self.helper())
            .await
            .ok()
            .flatten();
        if let Some(helper) = helper {
            match helper.run(spec.clone(), limit).await {
                Ok(out) => return Ok(out),
                Err(HelperError::Lost(e)) => return Err(e),
                Err(HelperError::NotSent(e)) => {
                    tracing::warn!(error = %e, "the workspace helper is gone; using one exec");
                }
            }
        }
        self.engine.exec(&self.name, spec, limit).await
    }

    /// The running helper, started when the container has none yet (once per container
    /// start: a container without the helper's mount, or an image whose C library is
    /// too old for it, is told once and then uses one exec per command).
    async fn helper(&self) -> Option<Arc<Helper>> {
        self.helper_dir.as_ref()?;
        let mut slot = self.helper.lock().await;
        if let Some(h) = slot.running.as_ref().filter(|h| h.alive()) {
            return Some(Arc::clone(h));
        }
        slot.running = None;
        let started = self.state().await.ok()??.started_at;
        if slot.tried_for.as_deref() == Some(started.as_str()) {
            return None;
        }
        slot.tried_for = Some(started);
        match Helper::start(&self.engine, &self.name).await {
            Ok(h) => {
                tracing::info!(container = %self.name, "the workspace helper runs");
                let h = Arc::new(h);
                slot.running = Some(Arc::clone(&h));
                Some(h)
            }
            Err(e) => {
                tracing::warn!(container = %self.name, error = %e, "no workspace helper: one exec per command");
                None
            }
        }
    }

    /// Start `spec` in the workspace and hand back its exec id and output stream (the
    /// desktop host, held for its life).
    pub async fn exec_stream(&self, spec: ExecSpec) -> Result<(String, crate::engine::ExecStream), String> {
        self.engine.exec_stream(&self.name, spec).await
    }

    /// The exit code of an exec started with [`Self::exec_stream`], once its stream ended.
    pub async fn exit_status(&self, exec_id: &str) -> Result<i64, String> {
        self.engine.exit_status(exec_id).await
    }

    /// Create the desktop user's runtime directory (`/run/user/<uid>`, 0700, the user's
    /// own), as root in the container: Docker runs no logind, which makes it on a
    /// desktop, and Chrome Remote Desktop 148 aborts without it. Needed after every
    /// container start (a new container has none; `install` also repairs its mode).
    pub async fn ensure_runtime_dir(&self) -> Result<(), String> {
        // Once per container start: an inspect over the socket costs a few ms, an exec
        // tens of them, and this is on the participant's path.
        let started = self.state().await?.filter(|c| c.running).map(|c| c.started_at);
        if started.is_some() && *self.runtime_dir_for.lock().unwrap_or_else(|p| p.into_inner()) == started {
            return Ok(());
        }
        self.make_runtime_dir().await?;
        *self.runtime_dir_for.lock().unwrap_or_else(|p| p.into_inner()) = started;
        Ok(())
    }

    async fn make_runtime_dir(&self) -> Result<(), String> {
        let u = self
            .user_info
            .get()
            .ok_or_else(|| "the desktop user is not known yet".to_owned())?;
        let (uid, gid, dir) = (u.uid.to_string(), u.gid.to_string(), u.runtime_dir());
        self.exec_as_root(
            &["install", "-d", "-m", "0700", "-o", &uid, "-g", &gid, &dir],
            Duration::from_secs(20),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("creating {dir}: {e}"))
    }

    /// Run `argv` as root in the container (the daemon's own steps); its output when it
    /// exits 0, else the reason.
    pub async fn exec_as_root(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput, String> {
        let spec = ExecSpec {
            user: "0".into(),
            cmd: argv.iter().map(|a| (*a).to_owned()).collect(),
            ..ExecSpec::default()
        };
        self.exec(spec, timeout).await?.ok()
    }

    /// Run `argv` as the desktop user; its output when it exits 0, else the reason.
    async fn exec_as_user_ok(
        &self,
        env: &[(&str, &str)],
        argv: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, String> {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        self.exec(self.as_user(env, &argv), timeout).await?.ok()
    }

    /// What of the client image contract (docs/deploy.md, "Client image") this image
    /// lacks, checked in the running container whatever its label says: the desktop
    /// user in group `chrome-remote-desktop`, start-host and the host script
    /// executable, a session file. Empty when it meets it.
    pub async fn contract_gaps(&self, start_host: &Path) -> Vec<String> {
        let mut gaps = Vec::new();
        match self
            .exec_as_root(&["id", "-nG", &self.user], Duration::from_secs(20))
            .await
        {
            Ok(out) => {
                let groups = String::from_utf8_lossy(&out.stdout);
                if !groups.split_whitespace().any(|g| g == CRD_GROUP) {
                    gaps.push(format!("the user {} is not in the group {CRD_GROUP}", self.user));
                }
            }
            Err(e) => gaps.push(format!("cannot read the groups of {}: {e}", self.user)),
        }
        let host_script = crd_host_script(start_host);
        for (path, what) in [
            (start_host.display().to_string(), "start-host"),
            (
                host_script.display().to_string(),
                "Chrome Remote Desktop's host script",
            ),
        ] {
            if self
                .exec_as_root(&["test", "-x", &path], Duration::from_secs(20))
                .await
                .is_err()
            {
                gaps.push(format!("no {what} at {path}"));
            }
        }
        let session = format!("{}/.chrome-remote-desktop-session", self.home());
        let has_session = self
            .exec_as_root(&["test", "-x", SESSION_FILE], Duration::from_secs(20))
            .await
            .is_ok()
            || self
                .exec_as_root(&["test", "-f", &session], Duration::from_secs(20))
                .await
                .is_ok();
        if !has_session {
            gaps.push(format!(
                "no desktop session for Chrome Remote Desktop ({SESSION_FILE} or ~/.chrome-remote-desktop-session)"
            ));
        }
        gaps
    }

    /// The host pids of the container's processes (`docker top`).
    pub async fn pids(&self) -> Result<Vec<u32>, String> {
        tokio::time::timeout(Duration::from_secs(20), self.engine.pids(&self.name))
            .await
            .unwrap_or_else(|_| Err("the engine did not answer within 20 s".into()))
    }

    /// Wait (up to `limit`) until no process named like `program` (its file name) runs in
    /// the workspace: a start-host run the daemon lost on a restart (killing `docker
    /// exec` does not stop it) must end before its outcome is judged.
    pub async fn wait_until_gone(&self, program: &Path, limit: Duration) {
        let Some(name) = program.file_name().map(|n| format!("={}", n.to_string_lossy())) else {
            return;
        };
        let Ok(matcher) = crate::software::SubjectSoftware::parse(&name) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pids = match self.pids().await {
                Ok(p) => p,
                Err(_) => return,
            };
            let m = matcher.clone();
            let running = tokio::task::spawn_blocking(move || m.running(Some(&pids)))
                .await
                .unwrap_or(false);
            if !running || tokio::time::Instant::now() >= deadline {
                if running {
                    tracing::warn!(program = %program.display(), "still running in the workspace after {limit:?}");
                }
                return;
            }
            tracing::info!(program = %program.display(), "waiting for an earlier run in the workspace to end");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Whether Chrome Remote Desktop is registered for the desktop user (a
    /// `host#*.json` in its config directory, on the home volume).
    pub async fn registered(&self) -> bool {
        let dir = format!("{}/.config/chrome-remote-desktop", self.home());
        self.exec_as_user_ok(
            &[],
            &["find", &dir, "-maxdepth", "1", "-name", "host#*.json"],
            Duration::from_secs(20),
        )
        .await
        .is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }

    /// Where the home volume lies on this host (the data export reads it).
    pub async fn home_volume_dir(&self) -> Result<PathBuf, String> {
        self.engine.volume_dir(&self.volume).await
    }

    /// Clone `repo` onto the desktop user's Desktop, as that user. `Ok(false)` when it
    /// is there already (a container re-created on the kept home volume).
    async fn clone_tutorial(&self, repo: &str) -> Result<bool, String> {
        let desktop = format!("{}/Desktop", self.home());
        let dest = format!("{desktop}/{}", clone_dir_name(repo));
        if self
            .exec_as_root(&["test", "-e", &dest], Duration::from_secs(20))
            .await
            .is_ok()
        {
            return Ok(false);
        }
        self.exec_as_user_ok(&[], &["mkdir", "-p", &desktop], Duration::from_secs(20))
            .await?;
        // A private repository fails instead of waiting for a password.
        let mut spec = self.as_user(
            &[("GIT_TERMINAL_PROMPT", "0")],
            &[
                "git".into(),
                "clone".into(),
                "--quiet".into(),
                "--".into(),
                repo.into(),
                dest.clone(),
            ],
        );
        spec.workdir = Some(desktop);
        self.exec(spec, Duration::from_secs(15 * 60))
            .await?
            .ok()
            .map(|_| true)
    }

    /// Copy the startup script into the container (mode 0755, owned by root) and run it
    /// as root there; its output goes to `log`. Err: the exit code and the last lines.
    async fn run_startup_script(
        &self,
        script: &Path,
        timeout: Duration,
        log: &Path,
    ) -> Result<(), (Option<i32>, String)> {
        let fail = |why: String| (None, why);
        let meta = std::fs::metadata(script).map_err(|e| fail(format!("{}: {e}", script.display())))?;
        if !meta.is_file() || meta.len() > MAX_SCRIPT_BYTES {
            return Err(fail(format!(
                "{} is not a file of at most {MAX_SCRIPT_BYTES} bytes",
                script.display()
            )));
        }
        let body = std::fs::read(script).map_err(|e| fail(format!("{}: {e}", script.display())))?;
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(Utc::now().timestamp().max(0) as u64);
        header.set_cksum();
        let tarball = archive
            .append_data(&mut header, SCRIPT_NAME, body.as_slice())
            .and_then(|()| archive.into_inner())
            .map_err(|e| fail(format!("packing the startup script: {e}")))?;
        self.engine
            .upload(&self.name, SCRIPT_DIR, tarball)
            .await
            .map_err(|e| fail(format!("copying the startup script in: {e}")))?;
        let mut file = tokio::fs::File::create(log)
            .await
            .map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let secs = timeout.as_secs().max(1).to_string();
        let path = format!("{SCRIPT_DIR}/{SCRIPT_NAME}");
        let spec = ExecSpec {
            user: "root".into(),
            env: vec![
                format!("LABLINK_DESKTOP_USER={}", self.user),
                format!("LABLINK_DESKTOP_HOME={}", self.home()),
            ],
            cmd: ["timeout", "-k", "10", &secs, &path].map(str::to_owned).to_vec(),
            ..ExecSpec::default()
        };
        // Its output goes to the log as it comes (stdout and stderr interleaved).
        let run = async {
            let (id, mut output) = self.engine.exec_stream(&self.name, spec).await?;
            while let Some(chunk) = output.next().await {
                let bytes = match chunk.map_err(|e| e.to_string())? {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message } => message,
                    LogOutput::StdIn { .. } => continue,
                };
                file.write_all(&bytes).await.map_err(|e| e.to_string())?;
            }
            let _ = file.flush().await;
            self.engine.exit_status(&id).await
        };
        let code = match tokio::time::timeout(timeout + Duration::from_secs(30), run).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(format!("cannot run the startup script: {e}"))),
            Err(_) => return Err(fail(format!("did not finish within {timeout:?}"))),
        };
        let output = std::fs::read(log).unwrap_or_default();
        let last = tail(&String::from_utf8_lossy(&output), REPORTED_LINES);
        for line in last.lines() {
            tracing::info!(target: "startup_script", "{line}");
        }
        let code = i32::try_from(code).ok();
        match code {
            Some(0) => Ok(()),
            Some(124 | 137) => Err((code, format!("killed after {timeout:?}\n{last}"))),
            _ => Err((code, last)),
        }
    }

    fn record(state: &StateDir) -> Record {
        std::fs::read(state.path(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(state: &StateDir, r: &Record) {
        let saved = serde_json::to_vec_pretty(r)
            .map_err(std::io::Error::other)
            .and_then(|b| state.write_file(RECORD, &b));
        if let Err(e) = saved {
            tracing::error!(error = %e, "cannot record the workspace's state");
        }
    }

    /// Bring the workspace to ready: engine, image, container, user, clone, script.
    /// Done steps are not repeated for the same container (a daemon restart).
    pub async fn prepare(
        &self,
        cfg: &WorkspaceConfig,
        state: &StateDir,
        gpu: bool,
        env: &[(&str, String)],
        start_host: &Path,
    ) -> Result<Prepared, PrepError> {
        let mut t = RawTimings::default();
        self.engine_ready().await?;
        let existing = self.state().await.map_err(PrepError::Retry)?;
        let container = match existing {
            Some(c) => {
                if !c.running {
                    tracing::info!(container = %self.name, "starting the stopped workspace container");
                    self.engine.start(&self.name).await.map_err(|e| {
                        PrepError::Retry(format!("cannot start the workspace container: {e}"))
                    })?;
                }
                c
            }
            None => {
                let s = Utc::now();
                self.pull(cfg.pull_attempts).await?;
                t.docker_pull_start = Some(rfc3339(s));
                let s = Utc::now();
                t.docker_pull_end = Some(rfc3339(s));
                tracing::info!(container = %self.name, gpu, "starting the workspace container");
                self.create(gpu, env).await?;
                t.container_start = Some(rfc3339(s));
                t.container_end = Some(rfc3339(Utc::now()));
                self.state()
                    .await
                    .map_err(PrepError::Retry)?
                    .ok_or_else(|| PrepError::Retry("the workspace container vanished".into()))?
            }
        };
        // The checks below run in the container: an engine hiccup must not read as a
        // broken image.
        match self.state().await {
            Ok(Some(c)) if c.running => {}
            Ok(_) => return Err(PrepError::Retry("the workspace container is not running".into())),
            Err(e) => return Err(PrepError::Retry(e)),
        }
        self.resolve_home().await?;
        let gaps = self.contract_gaps(start_host).await;
        if !gaps.is_empty() {
            return Err(PrepError::Fatal(format!(
                "the client image cannot give a Chrome Remote Desktop desktop: {}",
                gaps.join("; ")
            )));
        }
        self.ensure_runtime_dir().await.map_err(PrepError::Retry)?;
        let mut record = Self::record(state);
        if record.container_id != container.id {
            record = Record {
                container_id: container.id.clone(),
                ..Record::default()
            };
        }
        if let Some(reason) = &record.failed {
            return Err(PrepError::Fatal(reason.clone()));
        }
        if record.prepared {
            tracing::info!(container = %self.name, "the workspace was prepared before");
            return Ok(Prepared {
                timings: t,
                warnings: record.warnings,
            });
        }
        let mut warnings = Vec::new();
        if let Some(repo) = &cfg.tutorial_repo {
            let s = Utc::now();
            match self.clone_tutorial(repo).await {
                Ok(true) => tracing::info!(repo, "tutorial repository cloned"),
                Ok(false) => tracing::info!(repo, "the tutorial repository is on the Desktop already"),
                Err(e) => {
                    tracing::error!(repo, error = %e, "cannot clone the tutorial repository; going on");
                    warnings.push(format!("tutorial repository not cloned: {e}"));
                }
            }
            t.tutorial_clone_start = Some(rfc3339(s));
            t.tutorial_clone_end = Some(rfc3339(Utc::now()));
        }
        if let Some(script) = &cfg.startup_script {
            let s = Utc::now();
            let result = if record.script_started {
                // A run a daemon restart interrupted: it goes on in the container (killing
                // `docker exec` does not stop it). Let it end; never run it twice.
                tracing::warn!("the startup script was interrupted by a restart; waiting for it to end");
                self.wait_until_gone(
                    Path::new(SCRIPT_NAME),
                    cfg.startup_timeout + Duration::from_secs(30),
                )
                .await;
                Err((
                    None,
                    "interrupted by a restart of the daemon; its outcome is unknown (its output: startup-script.log in the daemon's state dir)".to_owned(),
                ))
            } else {
                record.script_started = true;
                Self::save(state, &record);
                tracing::info!(script = %script.display(), "running the startup script");
                self.run_startup_script(script, cfg.startup_timeout, &state.path("startup-script.log"))
                    .await
            };
            t.startup_script_start = Some(rfc3339(s));
            t.startup_script_end = Some(rfc3339(Utc::now()));
            if let Err((code, last)) = result {
                let status = code.map_or_else(|| "did not run".to_owned(), |c| format!("exit {c}"));
                let reason = format!("startup script failed ({status}): {last}");
                tracing::error!(%reason, "the startup script failed");
                if cfg.startup_on_error == OnError::Fail {
                    record.failed = Some(reason.clone());
                    Self::save(state, &record);
                    return Err(PrepError::Fatal(reason));
                }
                warnings.push(reason);
            } else {
                tracing::info!("the startup script succeeded");
            }
        }
        record.prepared = true;
        record.warnings = warnings.clone();
        Self::save(state, &record);
        Ok(Prepared { timings: t, warnings })
    }

    /// Reset after the admin released the seat: the container goes (and with it the
    /// running desktop), and so does the home volume, which holds the Chrome Remote
    /// Desktop registration and the participant's files. With `keep_files` the files are
    /// first moved to `<state>/kept/<id>/home`, outside every container, for the next
    /// data export only (which removes them once uploaded); the registration is
    /// deleted from that copy. The caller then prepares a new workspace from the image.
    pub async fn reset(&self, state: &StateDir, id: u64, keep_files: bool) -> Result<(), String> {
        let home = if keep_files {
            Some(self.home_volume_dir().await?)
        } else {
            None
        };
        // The container first: nothing may write to the volume while it is moved.
        self.engine
            .remove(&self.name)
            .await
            .map_err(|e| format!("removing the workspace container: {e}"))?;
        if let Some(home) = home {
            let kept = state.path("kept").join(id.to_string()).join("home");
            move_contents(&home, &kept).map_err(|e| format!("keeping the participant's files: {e}"))?;
            for user_home in std::fs::read_dir(&kept).into_iter().flatten().flatten() {
                let crd = user_home.path().join(".config/chrome-remote-desktop");
                if crd.exists() {
                    std::fs::remove_dir_all(&crd)
                        .map_err(|e| format!("removing the kept registration: {e}"))?;
                }
            }
        }
        // A volume already gone (a retried reset) is no error.
        self.engine
            .remove_volume(&self.volume)
            .await
            .map_err(|e| format!("removing the home volume: {e}"))?;
        // What was done for the old container no longer applies.
        state
            .remove_file(RECORD)
            .map_err(|e| format!("removing {RECORD}: {e}"))?;
        Ok(())
    }

    /// Keep the workspace container up: start it when it stopped (the desktop's own
    /// supervisor, `crd::Desktop`, then starts the registered host again).
    pub async fn supervise(&self) {
        match self.state().await {
            Ok(Some(c)) if c.running => {}
            Ok(Some(_)) => {
                tracing::warn!(container = %self.name, "the workspace container stopped; starting it");
                if let Err(e) = self.engine.start(&self.name).await {
                    tracing::error!(error = %e, "cannot start the workspace container");
                }
            }
            Ok(None) => tracing::error!(container = %self.name, "the workspace container is gone"),
            Err(e) => tracing::warn!(error = %e, "cannot inspect the workspace container"),
        }
    }
}

/// cloud-init's phase from its own record (`/var/lib/cloud/data/status.json`: each
/// stage's `start` and `finished`): from the first stage's start to the final stage's
/// end. `None` while the final stage runs, or without a record.
///
/// cloud-init wrote seconds since the epoch up to 24.1 and seconds since boot from 24.2
/// on (canonical/cloud-init `cmd/main.py`, "Harden cloud-init to system clock
/// changes"); a value under 10^9 is read as time since boot, placed with `boot_epoch`
/// (this host's boot, seconds since the epoch: [`boot_epoch`]).
/// Move everything in `from` into `to` (created), keeping `from` itself: by rename, or
/// by copy and delete across file systems.
fn move_contents(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if std::fs::rename(entry.path(), &dest).is_err() {
            let ok = std::process::Command::new("cp")
                .arg("-a")
                .arg(entry.path())
                .arg(&dest)
                .status()?
                .success();
            if !ok {
                return Err(std::io::Error::other(format!(
                    "cp -a {} failed",
                    entry.path().display()
                )));
            }
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// The homes an admin's release kept for the next data export: `(reset id, folder)`,
/// oldest first.
pub fn kept_homes(state_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(state_dir.join("kept"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.parse::<u64>().ok()?;
            let home = e.path().join("home");
            home.is_dir().then_some((id, home))
        })
        .collect();
    found.sort();
    found
}

pub fn cloud_init_phase(status_json: &Path, boot_epoch: f64) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(status_json).ok()?).ok()?;
    let v1 = v.get("v1")?;
    let at = |stage: &str, key: &str| {
        let secs = v1.get(stage)?.get(key)?.as_f64()?;
        let epoch = if secs < 1e9 { boot_epoch + secs } else { secs };
        DateTime::from_timestamp_millis((epoch * 1000.0).round() as i64)
    };
    let start = ["init-local", "init", "modules-config", "modules-final"]
        .iter()
        .filter_map(|s| at(s, "start"))
        .min()?;
    let end = at("modules-final", "finished")?;
    (end >= start).then_some((start, end))
}

/// When this host booted, in seconds since the epoch (now less `/proc/uptime`).
pub fn boot_epoch() -> f64 {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Utc::now().timestamp_millis() as f64 / 1000.0 - uptime
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_dirs_are_named_as_git_names_them() {
        assert_eq!(
            clone_dir_name("https://github.com/talmolab/sleap-tutorial-data.git"),
            "sleap-tutorial-data"
        );
        assert_eq!(clone_dir_name("https://example.org/x/repo/"), "repo");
        assert_eq!(clone_dir_name("git@github.com:org/data.git"), "data");
        assert_eq!(clone_dir_name("file:///srv/git/tut.git"), "tut");
        assert_eq!(clone_dir_name("https://example.org/"), "example.org");
        assert_eq!(clone_dir_name("https://example.org/.."), "tutorial");
    }

    #[test]
    fn the_container_gets_the_gpu_only_when_asked_and_never_the_images_entrypoint() {
        let cfg = WorkspaceConfig {
            image: "ghcr.io/org/lablink-client@sha256:00".into(),
            tutorial_repo: None,
            startup_script: None,
            startup_on_error: OnError::Continue,
            startup_timeout: Duration::from_secs(60),
            pull_attempts: 1,
            labels: vec!["lablink.local-runner=/tmp/x".into()],
        };
        let host = Hostname::parse("lablink-vm-3").unwrap();
        let w = Workspace::new(Arc::new(Engine::new().unwrap()), &cfg, &host, "client");
        let env = [("VM_NAME", "lablink-vm-3".to_owned())];
        let with = w.container_config(true, &env);
        let without = w.container_config(false, &env);
        let gpus = with
            .host_config
            .as_ref()
            .unwrap()
            .device_requests
            .clone()
            .unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(
            (gpus[0].count, gpus[0].driver.as_deref()),
            (Some(-1), Some("")),
            "--gpus all"
        );
        assert_eq!(gpus[0].capabilities, Some(vec![vec!["gpu".to_owned()]]));
        let h = without.host_config.clone().unwrap();
        assert_eq!(h.device_requests, None, "no GPU unless asked");
        assert_eq!(h.network_mode.as_deref(), Some("host"));
        assert_eq!(
            h.restart_policy.and_then(|r| r.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(h.init, Some(true));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(h.shm_size, Some(1 << 30));
        assert_eq!(h.binds, Some(vec!["lablink-home-lablink-vm-3:/home".to_owned()]));
        assert_eq!(
            h.cap_drop,
            Some(
                ["AUDIT_WRITE", "MKNOD", "NET_RAW", "SETPCAP", "SYS_CHROOT"]
                    .map(String::from)
                    .to_vec()
            )
        );
        let labels = without.labels.clone().unwrap();
        assert_eq!(labels["lablink.hostname"], "lablink-vm-3");
        assert_eq!(labels["lablink.local-runner"], "/tmp/x");
        assert_eq!(without.env, Some(vec!["VM_NAME=lablink-vm-3".to_owned()]));
        assert_eq!(without.entrypoint, Some(vec!["sleep".to_owned()]));
        assert_eq!(without.cmd, Some(vec!["infinity".to_owned()]));
        assert_eq!(
            without.image.as_deref(),
            Some("ghcr.io/org/lablink-client@sha256:00")
        );
    }

    #[test]
    fn cloud_init_timing_comes_from_its_status_record_once_final_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("status.json");
        let phase = |f: &Path| cloud_init_phase(f, 0.0);
        assert_eq!(phase(&f), None, "no record");
        std::fs::write(
            &f,
            r#"{"v1":{"datasource":"DataSourceEc2Local","stage":null,
              "init-local":{"errors":[],"start":1763028000.25,"finished":1763028003.0},
              "init":{"errors":[],"start":1763028004.0,"finished":1763028010.0},
              "modules-config":{"errors":[],"start":1763028011.0,"finished":1763028012.0},
              "modules-final":{"errors":[],"start":1763028013.0,"finished":null}}}"#,
        )
        .unwrap();
        assert_eq!(phase(&f), None, "final stage still running");
        let text = std::fs::read_to_string(&f).unwrap().replace(
            r#""start":1763028013.0,"finished":null"#,
            r#""start":1763028013.0,"finished":1763028330.5"#,
        );
        std::fs::write(&f, text).unwrap();
        let (s, e) = phase(&f).unwrap();
        assert_eq!(rfc3339(s), "2025-11-13T10:00:00.250Z");
        assert_eq!((e - s).num_milliseconds(), 330_250);

        // cloud-init 24.2 and later: seconds since boot.
        std::fs::write(
            &f,
            r#"{"v1":{"init-local":{"start":4.5,"finished":6.0},"init":{"start":7.0,"finished":12.0},
              "modules-final":{"start":20.0,"finished":95.25}}}"#,
        )
        .unwrap();
        let booted = 1_763_028_000.0;
        let (s, e) = cloud_init_phase(&f, booted).unwrap();
        assert_eq!(rfc3339(s), "2025-11-13T10:00:04.500Z");
        assert_eq!((e - s).num_milliseconds(), 90_750);
        let here = boot_epoch();
        assert!(here > 1e9 && here <= Utc::now().timestamp() as f64, "{here}");

        std::fs::write(&f, "not json").unwrap();
        assert_eq!(phase(&f), None);
    }
}
