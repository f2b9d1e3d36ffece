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
/// How often a host the daemon does not hold (started before a daemon restart) is looked
/// at: each look is an exec (tens of ms of runc), for as long as that host lives.
const ADOPTED_CHECK: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Exits 41 in a row started again at once; past that, the back-off applies.
const MAX_RELAUNCHES: u32 = 5;

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

/// Whether the host should run, and the request's epoch: every change of mind is a new
/// epoch, and a state counts for a request only when the supervisor reached it while
/// acting on that epoch or a later one (a `Running` left from the host before a fresh
/// code must not confirm the new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    on: bool,
    epoch: u64,
}

/// The CRD host of one workspace and its supervisor task.
pub struct Desktop {
    ws: Arc<Workspace>,
    want: watch::Sender<Want>,
    /// The state, and the epoch the supervisor was acting on when it reached it.
    state: watch::Sender<(HostState, u64)>,
    host_script: String,
}

impl Desktop {
    /// The desktop of `ws`, not wanted yet; its supervisor runs until the daemon stops.
    pub fn new(ws: Arc<Workspace>, start_host: &std::path::Path) -> Arc<Self> {
        let (want, _) = watch::channel(Want { on: false, epoch: 0 });
        let (state, _) = watch::channel((HostState::Stopped, 0));
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
        self.state.borrow().0.clone()
    }

    /// The state as it changes (with the epoch each was reached for).
    pub fn watch(&self) -> watch::Receiver<(HostState, u64)> {
        self.state.subscribe()
    }

    /// Whether the host should run (a registration exists and no new one is on its way);
    /// the epoch of that wish.
    pub fn want(&self, on: bool) -> u64 {
        self.want.send_if_modified(|w| {
            if w.on == on {
                return false;
            }
            *w = Want {
                on,
                epoch: w.epoch + 1,
            };
            true
        });
        self.want.borrow().epoch
    }

    /// Stop the host (a new registration or a reset follows) and wait until the
    /// supervisor has it down. Err: it would not stop (the caller must not go on as if
    /// it had).
    pub async fn stop(&self) -> Result<(), String> {
        // Nothing to stop when no host was wanted or seen (a first code): no exec is
        // spent on the participant's path.
        let maybe_running = self.want.borrow().on || self.state() != HostState::Stopped;
        let epoch = self.want(false);
        if !maybe_running {
            return Ok(());
        }
        let mut rx = self.state.subscribe();
        let limit = Duration::from_secs(90);
        let reached = tokio::time::timeout(
            limit,
            rx.wait_for(|(s, e)| *e >= epoch && matches!(s, HostState::Stopped | HostState::Failed(_))),
        )
        .await;
        match reached.ok().and_then(Result::ok).map(|r| r.0.clone()) {
            Some(HostState::Stopped) => Ok(()),
            Some(HostState::Failed(why)) => Err(format!("the running desktop host does not stop: {why}")),
            _ => Err(format!("the running desktop host did not stop within {limit:?}")),
        }
    }

    /// Want the host and wait (up to `limit`) until it runs for this request. Err: why
    /// it does not.
    pub async fn start_and_wait(&self, limit: Duration) -> Result<(), String> {
        let epoch = self.want(true);
        let mut rx = self.state.subscribe();
        let mut last_failure = None;
        let waited = tokio::time::timeout(limit, async {
            loop {
                let (s, e) = rx.borrow_and_update().clone();
                if e >= epoch {
                    match s {
                        HostState::Running => return true,
                        HostState::Failed(why) => last_failure = Some(why),
                        _ => {}
                    }
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match waited {
            Ok(true) => Ok(()),
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

    fn set(&self, s: HostState, epoch: u64) {
        self.state.send_if_modified(|cur| {
            if *cur == (s.clone(), epoch) {
                return false;
            }
            if cur.0 != s {
                tracing::info!(from = ?cur.0, to = ?s, "desktop host");
            }
            *cur = (s, epoch);
            true
        });
    }

    /// The supervisor: while the host is wanted, keep one running; when it is not, have
    /// none. Every state it reaches carries the epoch of the wish it acted on.
    async fn supervise(self: Arc<Self>) {
        let mut want = self.want.subscribe();
        let mut backoff = FIRST_BACKOFF;
        // Exits 41 in a row: a host that asks again and again is backed off too.
        let mut relaunches = 0u32;
        // Watching a host an earlier daemon started (not held by this one).
        let mut adopted = false;
        loop {
            let w = *want.borrow_and_update();
            if !w.on {
                let mut down = HostState::Stopped;
                if adopted {
                    // Not held: stopped by name.
                    match self.host_command(&["--stop"], &[]).await {
                        Ok(_) => adopted = false,
                        Err(e) => down = HostState::Failed(format!("chrome-remote-desktop --stop: {e}")),
                    }
                }
                self.set(down, w.epoch);
                if want.changed().await.is_err() {
                    return;
                }
                backoff = FIRST_BACKOFF;
                continue;
            }
            // A host an earlier daemon started goes on in the container (ending an
            // exec's stream does not stop it): watch it instead of starting another.
            let runtime_dir = self.ws.ensure_runtime_dir().await;
            if runtime_dir.is_ok() && self.started().await {
                adopted = true;
                self.set(HostState::Running, w.epoch);
                backoff = FIRST_BACKOFF;
                let _ = tokio::time::timeout(ADOPTED_CHECK, want.changed()).await;
                continue;
            }
            adopted = false;
            self.set(HostState::Starting, w.epoch);
            let outcome = match runtime_dir {
                Ok(()) => self.run_host(&mut want, w.epoch).await,
                Err(e) => HostExit::Failed {
                    why: e,
                    ran_long: false,
                },
            };
            match outcome {
                HostExit::Stopped => relaunches = 0,
                HostExit::StopFailed(why) => {
                    // Still running, not held: watched (and stopped again) by name.
                    tracing::error!(reason = %why, "the desktop host does not stop");
                    adopted = true;
                    self.set(HostState::Failed(why), w.epoch);
                }
                HostExit::Relaunch if relaunches < MAX_RELAUNCHES => {
                    relaunches += 1;
                    tracing::info!("the desktop host asked to be started again (exit 41)");
                }
                HostExit::Relaunch => {
                    relaunches = 0;
                    let why =
                        format!("the desktop host asked to be started again {MAX_RELAUNCHES} times in a row");
                    self.failed(&mut want, w.epoch, why, &mut backoff).await;
                }
                HostExit::Failed { why, ran_long } => {
                    relaunches = 0;
                    if ran_long {
                        backoff = FIRST_BACKOFF;
                    }
                    self.failed(&mut want, w.epoch, why, &mut backoff).await;
                }
            }
        }
    }

    /// A start failed: say so, then wait the back-off (unless the host stops being
    /// wanted meanwhile).
    async fn failed(
        &self,
        want: &mut watch::Receiver<Want>,
        epoch: u64,
        why: String,
        backoff: &mut Duration,
    ) {
        tracing::error!(reason = %why, retry_in = ?*backoff, "the desktop host is not running");
        self.set(HostState::Failed(why), epoch);
        let _ = tokio::time::timeout(*backoff, want.wait_for(|w| !w.on)).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
    }

    /// Start the host, held by this task (an attached exec), until it exits or is no
    /// longer wanted.
    async fn run_host(&self, want: &mut watch::Receiver<Want>, epoch: u64) -> HostExit {
        let argv = [self.host_script.clone(), "--start".into(), "--new-session".into()];
        // The environment of the chrome-remote-desktop@.service unit.
        let env = [("XDG_SESSION_CLASS", "user"), ("XDG_SESSION_TYPE", "x11")];
        let started_at = std::time::Instant::now();
        let (id, mut output) = match self.ws.exec_stream(self.ws.as_user(&env, &argv)).await {
            Ok(started) => started,
            Err(e) => {
                return HostExit::Failed {
                    why: format!("cannot start the host: {e}"),
                    ran_long: false,
                };
            }
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
                    if changed.is_err() || !want.borrow().on {
                        // `--stop` ends the host; its stream then ends.
                        let stopped = self.host_command(&["--stop"], &[]).await;
                        let ended = tokio::time::timeout(Duration::from_secs(10), async {
                            while output.next().await.is_some() {}
                        })
                        .await;
                        return match (stopped, ended) {
                            (_, Ok(())) => HostExit::Stopped,
                            (Err(e), Err(_)) => HostExit::StopFailed(format!("chrome-remote-desktop --stop: {e}")),
                            (Ok(_), Err(_)) => HostExit::StopFailed("the host was still running 10 s after --stop".into()),
                        };
                    }
                }
                _ = check.tick(), if !confirmed => {
                    if self.started().await {
                        confirmed = true;
                        self.set(HostState::Running, epoch);
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
        let code = match self.ws.exit_status(&id).await {
            Ok(c) => c,
            Err(e) => {
                return HostExit::Failed {
                    why: format!("the host's exit is unknown: {e}"),
                    ran_long: false,
                };
            }
        };
        match code {
            c if c == i64::from(RELAUNCH_EXIT_CODE) => HostExit::Relaunch,
            c => HostExit::Failed {
                why: format!(
                    "chrome-remote-desktop --start --new-session exited {c}{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ),
                ran_long: started_at.elapsed() > Duration::from_secs(60),
            },
        }
    }
}

enum HostExit {
    /// Stopped as asked.
    Stopped,
    /// Asked to stop, it did not: still running.
    StopFailed(String),
    /// Exit 41: start it again at once.
    Relaunch,
    /// Any other end; `ran_long`: it had run a while (the back-off starts over).
    Failed { why: String, ran_long: bool },
}
