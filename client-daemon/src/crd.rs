//! Chrome Remote Desktop 148 in the workspace container: the desktop session, as a state
//! the daemon names and changes in one place.
//!
//! CRD 148 in a container (no logind, no systemd) needs what a desktop login would do
//! (Chromium `remoting/host/setup/`, `linux_me2me_host.py`, the
//! `chrome-remote-desktop@.service` unit; talmolab/lablink e25ef87b):
//! - `/run/user/<uid>` made by root (0700, the user's) and the user's own `USER`,
//!   `LOGNAME`, `HOME` and `XDG_RUNTIME_DIR` on every command, or start-host aborts
//!   (SIGTRAP, exit 133): [`Workspace::ensure_runtime_dir`], [`Workspace::as_user`];
//! - start-host with `--no-start`, which only registers (`host#<hash>.json`); without it
//!   start-host tries systemd and fails after registering (`starthost.rs`);
//! - the host started as the unit starts it, `chrome-remote-desktop --start
//!   --new-session` with `XDG_SESSION_CLASS=user` and `XDG_SESSION_TYPE=x11`, held by
//!   this module's supervisor: started again at once when it exits 41 (its "restart
//!   me", the unit's `RestartForceExitStatus=41`), with back-off after any other exit.
//!   Plain `--start` needs the `user-session` helper, which CRD 148 no longer ships.
//!
//! Owns: whether the host should run ([`Desktop::want`]), starting, watching and
//! stopping it. Must not: run start-host (the assignment loop does, once per code), or
//! run anything of CRD as root.

use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::workspace::{Workspace, crd_host_script};

/// The host's "start me again" exit (linux_me2me_host.py `RELAUNCH_EXIT_CODE`).
pub const RELAUNCH_EXIT_CODE: i32 = 41;
/// How often a host the daemon does not hold (started before a daemon restart) is looked at.
const ADOPTED_CHECK: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The desktop session, as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    /// Not wanted (no registration yet, a new code on its way, a reset).
    Stopped,
    /// Being started (the runtime directory, then the host).
    Starting,
    /// The host runs (`--get-status` says `STARTED`).
    Running,
    /// The last start failed; the supervisor tries again after a back-off.
    Failed(String),
}

/// The CRD host of one workspace and its supervisor task.
pub struct Desktop {
    ws: Arc<Workspace>,
    want: watch::Sender<bool>,
    state: watch::Sender<HostState>,
    host_script: String,
}

impl Desktop {
    /// The desktop of `ws`, not wanted yet; its supervisor runs until the daemon stops.
    pub fn new(ws: Arc<Workspace>, start_host: &std::path::Path) -> Arc<Self> {
        let (want, _) = watch::channel(false);
        let (state, _) = watch::channel(HostState::Stopped);
        let d = Arc::new(Self {
            ws,
            want,
            state,
            host_script: crd_host_script(start_host).display().to_string(),
        });
        tokio::spawn(Arc::clone(&d).supervise());
        d
    }

    pub fn state(&self) -> HostState {
        self.state.borrow().clone()
    }

    /// Whether the host should run (a registration exists and no new one is on its way).
    pub fn want(&self, on: bool) {
        self.want.send_if_modified(|w| std::mem::replace(w, on) != on);
    }

    /// Stop the host (a new registration or a reset follows) and wait until it is down.
    pub async fn stop(&self) {
        // Nothing to stop when no host was wanted or seen (a first code): no exec is
        // spent on the participant's path.
        let maybe_running = *self.want.borrow() || self.state() != HostState::Stopped;
        self.want(false);
        if !maybe_running {
            return;
        }
        let mut rx = self.state.subscribe();
        let stopped =
            tokio::time::timeout(Duration::from_secs(40), rx.wait_for(|s| *s == HostState::Stopped)).await;
        if stopped.is_err() {
            tracing::warn!("the desktop host did not stop within 40 s");
        }
    }

    /// Want the host and wait (up to `limit`) until it runs. Err: why it does not.
    pub async fn start_and_wait(&self, limit: Duration) -> Result<(), String> {
        self.want(true);
        let mut rx = self.state.subscribe();
        let mut last_failure = None;
        let waited = tokio::time::timeout(limit, async {
            loop {
                match rx.borrow_and_update().clone() {
                    HostState::Running => return,
                    HostState::Failed(why) => last_failure = Some(why),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        match (waited, self.state()) {
            (Ok(()), HostState::Running) => Ok(()),
            _ => Err(last_failure.unwrap_or_else(|| format!("the host was not running after {limit:?}"))),
        }
    }

    /// `chrome-remote-desktop <args>` as the desktop user; its stdout, or why it failed.
    async fn host_command(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
        let mut argv = vec![self.host_script.clone()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let out = self
            .ws
            .exec(self.ws.as_user(env, &argv), Duration::from_secs(40))
            .await
            .map_err(|e| format!("{}: {e}", args.join(" ")))?;
        if out.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} exited {}: {}",
                args.join(" "),
                out.code.map_or("without a status".into(), |c| c.to_string()),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Whether the host runs, as its own script says (`--get-status`).
    async fn started(&self) -> bool {
        self.host_command(&["--get-status"], &[])
            .await
            .is_ok_and(|out| out.trim() == "STARTED")
    }

    fn set(&self, s: HostState) {
        self.state.send_if_modified(|cur| {
            if *cur == s {
                return false;
            }
            tracing::info!(from = ?cur, to = ?s, "desktop host");
            *cur = s;
            true
        });
    }

    /// The supervisor: while the host is wanted, keep one running.
    async fn supervise(self: Arc<Self>) {
        let mut want = self.want.subscribe();
        let mut backoff = FIRST_BACKOFF;
        // Watching a host an earlier daemon started (not held by this one).
        let mut adopted = false;
        loop {
            if !*want.borrow_and_update() {
                if std::mem::take(&mut adopted) {
                    // Not held: stopped by name.
                    if let Err(e) = self.host_command(&["--stop"], &[]).await {
                        tracing::warn!(error = %e, "chrome-remote-desktop --stop failed");
                    }
                }
                self.set(HostState::Stopped);
                if want.changed().await.is_err() {
                    return;
                }
                backoff = FIRST_BACKOFF;
                continue;
            }
            // A host an earlier daemon started goes on in the container (killing
            // `docker exec` does not stop it): watch it instead of starting another.
            if self.ws.ensure_runtime_dir().await.is_ok() && self.started().await {
                adopted = true;
                self.set(HostState::Running);
                backoff = FIRST_BACKOFF;
                let _ = tokio::time::timeout(ADOPTED_CHECK, want.changed()).await;
                continue;
            }
            adopted = false;
            self.set(HostState::Starting);
            let outcome = match self.ws.ensure_runtime_dir().await {
                Ok(()) => self.run_host(&mut want).await,
                Err(e) => HostExit::Failed(e),
            };
            match outcome {
                HostExit::Stopped => {}
                HostExit::Relaunch => {
                    tracing::info!("the desktop host asked to be started again (exit 41)");
                }
                HostExit::Failed(why) => {
                    tracing::error!(reason = %why, retry_in = ?backoff, "the desktop host is not running");
                    self.set(HostState::Failed(why));
                    // Sleep, unless the host stops being wanted meanwhile.
                    let _ = tokio::time::timeout(backoff, want.wait_for(|w| !*w)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Start the host, held by this task (an attached exec), until it exits or is no
    /// longer wanted.
    async fn run_host(&self, want: &mut watch::Receiver<bool>) -> HostExit {
        let argv = [self.host_script.clone(), "--start".into(), "--new-session".into()];
        // The environment of the chrome-remote-desktop@.service unit.
        let env = [("XDG_SESSION_CLASS", "user"), ("XDG_SESSION_TYPE", "x11")];
        let (id, mut output) = match self.ws.exec_stream(self.ws.as_user(&env, &argv)).await {
            Ok(started) => started,
            Err(e) => return HostExit::Failed(format!("cannot start the host: {e}")),
        };
        // Keep the end of what it says, for the reason of a failure.
        let mut said: Vec<u8> = Vec::new();
        let mut confirmed = false;
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                chunk = output.next() => match chunk {
                    Some(Ok(LogOutput::StdErr { message } | LogOutput::StdOut { message })) => {
                        said.extend_from_slice(&message);
                        if said.len() > 16 * 1024 {
                            said.drain(..said.len() - 8 * 1024);
                        }
                    }
                    Some(Ok(_)) => {}
                    // The stream ends (or breaks) when the host's process does.
                    Some(Err(_)) | None => break,
                },
                changed = want.changed() => {
                    if changed.is_err() || !*want.borrow() {
                        // `--stop` ends the host; its stream then ends.
                        if let Err(e) = self.host_command(&["--stop"], &[]).await {
                            tracing::warn!(error = %e, "chrome-remote-desktop --stop failed");
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            while output.next().await.is_some() {}
                        })
                        .await;
                        return HostExit::Stopped;
                    }
                }
                _ = check.tick(), if !confirmed => {
                    if self.started().await {
                        confirmed = true;
                        self.set(HostState::Running);
                    }
                }
            }
        }
        let last = String::from_utf8_lossy(&said)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let mut code = None;
        for _ in 0..50 {
            match self.ws.exit_code(&id).await {
                Ok(Some(c)) => {
                    code = Some(c);
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return HostExit::Failed(format!("the host's exit is unknown: {e}")),
            }
        }
        match code {
            Some(c) if c == i64::from(RELAUNCH_EXIT_CODE) => HostExit::Relaunch,
            other => HostExit::Failed(format!(
                "chrome-remote-desktop --start --new-session exited {}{}",
                other.map_or("without a status".into(), |c| c.to_string()),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            )),
        }
    }
}

enum HostExit {
    Stopped,
    Relaunch,
    Failed(String),
}
