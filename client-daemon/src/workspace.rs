//! The participant's workspace: ONE long-lived container per VM, run from the client
//! image on the host's Docker engine (through the `docker` CLI), as the classic system
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

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lablink_core::domain::Hostname;
use lablink_wire::RawTimings;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

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

/// The container as Docker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub running: bool,
    pub started_at: String,
}

pub struct Workspace {
    docker: PathBuf,
    image: String,
    host: Hostname,
    user: String,
    name: String,
    volume: String,
    labels: Vec<String>,
    user_info: OnceLock<UserInfo>,
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

/// The last non-empty line of a command's stderr (or stdout), for a reason.
fn last_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let std = String::from_utf8_lossy(&out.stdout);
    err.lines()
        .chain(std.lines())
        .rfind(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(300).collect())
        .unwrap_or_else(|| out.status.to_string())
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
    pub fn new(cfg: &WorkspaceConfig, host: &Hostname, user: &str) -> Self {
        Self {
            docker: cfg.docker.clone(),
            image: cfg.image.clone(),
            host: host.clone(),
            user: user.to_owned(),
            name: format!("lablink-workspace-{host}"),
            volume: format!("lablink-home-{host}"),
            labels: cfg.labels.clone(),
            user_info: OnceLock::new(),
        }
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

    fn command(&self) -> Command {
        let mut c = Command::new(&self.docker);
        // Nothing the daemon is given reaches Docker or the container.
        c.env_remove("LABLINK_CREDENTIAL")
            .env_remove("LABLINK_ENROLL_SECRET")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Run the CLI; its output when it succeeded, else the reason.
    async fn docker(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let run = self.command().args(args).output();
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(format!("docker {} did not finish within {timeout:?}", args[0])),
            Ok(Err(e)) => Err(format!("cannot run {}: {e}", self.docker.display())),
            Ok(Ok(out)) if out.status.success() => Ok(out),
            Ok(Ok(out)) => Err(last_line(&out)),
        }
    }

    /// The engine answers (it may start after this daemon at boot: retried a minute).
    async fn engine(&self) -> Result<(), PrepError> {
        let mut last = String::new();
        for _ in 0..30 {
            match self
                .docker(
                    &["version", "--format", "{{.Server.Version}}"],
                    Duration::from_secs(20),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Err(PrepError::Retry(format!(
            "the Docker engine does not answer: {last}"
        )))
    }

    /// The container, if it exists.
    pub async fn state(&self) -> Result<Option<ContainerState>, String> {
        let out = self
            .command()
            .args([
                "inspect",
                "--type",
                "container",
                "--format",
                "{{.Id}}|{{.State.Running}}|{{.State.StartedAt}}",
                &self.name,
            ])
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.docker.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such") {
                return Ok(None);
            }
            return Err(last_line(&out));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.trim().splitn(3, '|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(running), Some(started)) => Ok(Some(ContainerState {
                id: id.to_owned(),
                running: running == "true",
                started_at: started.to_owned(),
            })),
            _ => Err(format!("docker inspect printed {text:?}")),
        }
    }

    /// Make the image present: kept when it is on the host, else pulled with retries.
    async fn pull(&self, attempts: u32) -> Result<(), PrepError> {
        if self
            .docker(
                &["image", "inspect", "--format", "{{.Id}}", &self.image],
                Duration::from_secs(30),
            )
            .await
            .is_ok()
        {
            tracing::info!(image = %self.image, "the client image is on this host");
            return Ok(());
        }
        let mut last = String::new();
        for attempt in 1..=attempts {
            tracing::info!(image = %self.image, attempt, "pulling the client image");
            match self
                .docker(&["pull", "--quiet", &self.image], Duration::from_secs(30 * 60))
                .await
            {
                Ok(_) => return Ok(()),
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

    /// The `docker run` arguments of the workspace container.
    pub fn run_args(&self, gpu: bool, env: &[(&str, String)]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            self.name.clone(),
            "--label".into(),
            format!("lablink.hostname={}", self.host),
            "--network".into(),
            "host".into(),
            "--restart".into(),
            "unless-stopped".into(),
            // Docker's init reaps what start-host and the desktop leave behind.
            "--init".into(),
            // Neither sudo nor any set-uid program in the image makes the desktop user
            // root (the kernel ignores set-uid bits under no_new_privs).
            "--security-opt".into(),
            "no-new-privileges".into(),
            // Browsers keep their renderers' memory in /dev/shm; Docker's 64 MB makes
            // tabs crash.
            "--shm-size".into(),
            "1g".into(),
            "--volume".into(),
            format!("{}:/home", self.volume),
        ];
        for cap in DROPPED_CAPABILITIES {
            a.extend(["--cap-drop".into(), cap.into()]);
        }
        for l in &self.labels {
            a.extend(["--label".into(), l.clone()]);
        }
        if gpu {
            a.extend(["--gpus".into(), "all".into()]);
        }
        for (k, v) in env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        // Not the image's entrypoint (its classic services): a process that only waits.
        a.extend([
            "--entrypoint".into(),
            "sleep".into(),
            self.image.clone(),
            "infinity".into(),
        ]);
        a
    }

    async fn create(&self, gpu: bool, env: &[(&str, String)]) -> Result<(), PrepError> {
        let args = self.run_args(gpu, env);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker(&args, Duration::from_secs(120))
            .await
            .map(|_| ())
            .map_err(|e| PrepError::Retry(format!("cannot start the workspace container: {e}")))
    }

    /// Find the desktop user's home (and that the user exists).
    async fn resolve_home(&self) -> Result<String, PrepError> {
        let out = self
            .docker(
                &["exec", &self.name, "getent", "passwd", &self.user],
                Duration::from_secs(30),
            )
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

    /// `docker exec` as the desktop user in its home, with `env`, running `argv`.
    /// The desktop user's own `USER`, `LOGNAME`, `HOME` and `XDG_RUNTIME_DIR` are
    /// always set: Chrome Remote Desktop 148 aborts on a `$USER` that is not the running
    /// user, or without its runtime directory (talmolab/lablink 566cda91, e25ef87b).
    pub fn exec_as_user(&self, env: &[(&str, &str)], argv: &[String]) -> Command {
        let home = self.home();
        let mut c = self.command();
        c.args(["exec", "--interactive", "--user", &self.user, "--workdir", &home])
            .arg("--env")
            .arg(format!("HOME={home}"))
            .arg("--env")
            .arg(format!("USER={}", self.user))
            .arg("--env")
            .arg(format!("LOGNAME={}", self.user));
        if let Some(u) = self.user_info.get() {
            c.arg("--env").arg(format!("XDG_RUNTIME_DIR={}", u.runtime_dir()));
        }
        for (k, v) in env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        c.arg(&self.name).args(argv);
        c
    }

    /// Create the desktop user's runtime directory (`/run/user/<uid>`, 0700, the user's
    /// own), as root in the container: Docker runs no logind, which makes it on a
    /// desktop, and Chrome Remote Desktop 148 aborts without it. Needed after every
    /// container start (a new container has none; `install` also repairs its mode).
    pub async fn ensure_runtime_dir(&self) -> Result<(), String> {
        let u = self
            .user_info
            .get()
            .ok_or_else(|| "the desktop user is not known yet".to_owned())?;
        let (uid, gid, dir) = (u.uid.to_string(), u.gid.to_string(), u.runtime_dir());
        self.docker(
            &[
                "exec", "--user", "0", &self.name, "install", "-d", "-m", "0700", "-o", &uid, "-g", &gid,
                &dir,
            ],
            Duration::from_secs(20),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("creating {dir}: {e}"))
    }

    /// Run `argv` as root in the container (the daemon's own steps); its output.
    pub async fn exec_as_root(&self, argv: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut args = vec!["exec", "--user", "0", self.name.as_str()];
        args.extend_from_slice(argv);
        self.docker(&args, timeout).await
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
        let out = self
            .docker(&["top", &self.name, "-o", "pid"], Duration::from_secs(20))
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
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
        self.docker(
            &[
                "exec",
                "--user",
                &self.user,
                &self.name,
                "find",
                &dir,
                "-maxdepth",
                "1",
                "-name",
                "host#*.json",
            ],
            Duration::from_secs(20),
        )
        .await
        .is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }

    /// Where the home volume lies on this host (the data export reads it).
    pub async fn home_volume_dir(&self) -> Result<PathBuf, String> {
        let out = self
            .docker(
                &["volume", "inspect", "--format", "{{.Mountpoint}}", &self.volume],
                Duration::from_secs(20),
            )
            .await?;
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }

    /// Clone `repo` onto the desktop user's Desktop, as that user. `Ok(false)` when it
    /// is there already (a container re-created on the kept home volume).
    async fn clone_tutorial(&self, repo: &str) -> Result<bool, String> {
        let desktop = format!("{}/Desktop", self.home());
        let dest = format!("{desktop}/{}", clone_dir_name(repo));
        if self
            .docker(
                &["exec", &self.name, "test", "-e", &dest],
                Duration::from_secs(20),
            )
            .await
            .is_ok()
        {
            return Ok(false);
        }
        self.docker(
            &["exec", "--user", &self.user, &self.name, "mkdir", "-p", &desktop],
            Duration::from_secs(20),
        )
        .await?;
        let home = format!("HOME={}", self.home());
        self.docker(
            &[
                "exec",
                "--user",
                &self.user,
                "--env",
                &home,
                // A private repository fails instead of waiting for a password.
                "--env",
                "GIT_TERMINAL_PROMPT=0",
                "--workdir",
                &desktop,
                &self.name,
                "git",
                "clone",
                "--quiet",
                "--",
                repo,
                &dest,
            ],
            Duration::from_secs(15 * 60),
        )
        .await
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
        let mut cp = self.command();
        cp.args(["cp", "-", &format!("{}:{SCRIPT_DIR}", self.name)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cp
            .spawn()
            .map_err(|e| fail(format!("cannot run docker cp: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let write = async move {
            use tokio::io::AsyncWriteExt;
            let r = stdin.write_all(&tarball).await;
            drop(stdin);
            r
        };
        let (w, out) = tokio::join!(write, child.wait_with_output());
        match (w, out) {
            (Ok(()), Ok(o)) if o.status.success() => {}
            (_, Ok(o)) => return Err(fail(format!("copying the startup script in: {}", last_line(&o)))),
            (_, Err(e)) => return Err(fail(format!("copying the startup script in: {e}"))),
        }
        let file = std::fs::File::create(log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let err = file.try_clone().map_err(|e| fail(e.to_string()))?;
        let secs = timeout.as_secs().max(1).to_string();
        let user = format!("LABLINK_DESKTOP_USER={}", self.user);
        let home = format!("LABLINK_DESKTOP_HOME={}", self.home());
        let path = format!("{SCRIPT_DIR}/{SCRIPT_NAME}");
        let mut run = self.command();
        run.args([
            "exec", "--user", "root", "--env", &user, "--env", &home, &self.name, "timeout", "-k", "10",
            &secs, &path,
        ])
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
        let status = match tokio::time::timeout(timeout + Duration::from_secs(30), run.status()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(format!("cannot run docker exec: {e}"))),
            Err(_) => return Err(fail(format!("did not finish within {timeout:?}"))),
        };
        let output = std::fs::read(log).unwrap_or_default();
        let last = tail(&String::from_utf8_lossy(&output), REPORTED_LINES);
        for line in last.lines() {
            tracing::info!(target: "startup_script", "{line}");
        }
        if status.success() {
            Ok(())
        } else if matches!(status.code(), Some(124 | 137)) {
            Err((status.code(), format!("killed after {timeout:?}\n{last}")))
        } else {
            Err((status.code(), last))
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
        self.engine().await?;
        let existing = self.state().await.map_err(PrepError::Retry)?;
        let container = match existing {
            Some(c) => {
                if !c.running {
                    tracing::info!(container = %self.name, "starting the stopped workspace container");
                    self.docker(&["start", &self.name], Duration::from_secs(120))
                        .await
                        .map_err(|e| {
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
        self.docker(&["rm", "--force", &self.name], Duration::from_secs(120))
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
        // `--force`: a volume already gone (a retried reset) is no error.
        self.docker(
            &["volume", "rm", "--force", &self.volume],
            Duration::from_secs(120),
        )
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
                if let Err(e) = self
                    .docker(&["start", &self.name], Duration::from_secs(120))
                    .await
                {
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
            image: "ghcr.io/talmolab/lablink-client-base-image:v1".into(),
            tutorial_repo: None,
            startup_script: None,
            startup_on_error: OnError::Continue,
            startup_timeout: Duration::from_secs(60),
            docker: "docker".into(),
            pull_attempts: 1,
            labels: vec!["lablink.local-runner=/tmp/x".into()],
        };
        let host = Hostname::parse("lablink-vm-3").unwrap();
        let w = Workspace::new(&cfg, &host, "client");
        let env = [("VM_NAME", "lablink-vm-3".to_owned())];
        let with = w.run_args(true, &env).join(" ");
        let without = w.run_args(false, &env).join(" ");
        assert!(with.contains("--gpus all"), "{with}");
        assert!(!without.contains("--gpus"), "{without}");
        assert!(
            without.contains("--label lablink.hostname=lablink-vm-3 --network host --restart unless-stopped")
        );
        assert!(
            without
                .contains("--init --security-opt no-new-privileges --shm-size 1g --volume lablink-home-lablink-vm-3:/home"),
            "{without}"
        );
        assert!(
            without.contains(
                "--cap-drop AUDIT_WRITE --cap-drop MKNOD --cap-drop NET_RAW --cap-drop SETPCAP --cap-drop SYS_CHROOT \
                 --label lablink.local-runner=/tmp/x"
            ),
            "{without}"
        );
        assert!(without.ends_with(
            "--env VM_NAME=lablink-vm-3 --entrypoint sleep ghcr.io/talmolab/lablink-client-base-image:v1 infinity"
        ));
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
