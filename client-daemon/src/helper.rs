//! The workspace helper: one long-lived process in each workspace container through
//! which the daemon runs its short commands (start-host, the desktop host's `--stop`
//! and `--get-status`, its own root steps), instead of one `docker exec` each. An exec
//! costs runc about 55–60 ms here (and ~86 ms for `true` through the CLI), which alone
//! is more than the 50 ms a participant's request may take to reach start-host; a
//! request through the helper is a line on a pipe and one fork.
//!
//! How it stays as contained as `docker exec`:
//! - It *is* a `docker exec` (started once per container start, as root in the
//!   container): its processes have exactly the container's namespaces, cgroup,
//!   seccomp and AppArmor profiles, capability bounding set and `no_new_privs`, which
//!   nothing outside runc could reproduce (entering the namespaces from the host, as
//!   `nsenter` does, would leave all of those out).
//! - Its only channel is the exec's stdin and stdout, held by the engine: no socket or
//!   file in the container. The desktop user cannot reach it (a root process's
//!   `/proc/<pid>/fd` is closed to other users) nor signal it.
//! - Its program is the daemon's own executable, hard-linked (or copied) into a
//!   root-only directory of the daemon's state dir and mounted read-only at
//!   [`MOUNT_DIR`] in the container: the participant can neither replace nor change it.
//! - It drops to the requested user the way runc does for `docker exec -u`: the
//!   supplementary groups from the container's `/etc/group`, then the group, then the
//!   user (`setgroups`, `setgid`, `setuid`), with the user's `HOME` from `/etc/passwd`.
//!
//! Where it cannot run (a container made before the helper existed has no mount, or the
//! image's C library is older than the one the daemon was linked against) the daemon
//! says so once and uses one exec per command, as before.
//!
//! Owns: the helper's wire (JSON lines, [`PROTOCOL`]), both ends. Must not: know what
//! the commands are for.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bollard::container::LogOutput;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, oneshot};

use crate::engine::{Engine, ExecOutput, ExecSpec, ExecStream};

/// The first argument that makes the daemon's executable the helper.
pub const HELPER_ARG: &str = "__lablink-workspace-helper";
/// Where the helper's directory is mounted (read-only) in the workspace.
pub const MOUNT_DIR: &str = "/run/lablink-helper";
/// The helper's file name in its directory.
const PROGRAM: &str = "lablink-helper";
/// The wire's version: the helper says it first; the daemon uses a helper that says
/// the same, and one exec per command otherwise (an older helper after an upgrade).
pub const PROTOCOL: u32 = 1;
/// Output kept of a command's stdout and stderr each (their tails), as for an exec.
const KEPT_OUTPUT: usize = 64 * 1024;
/// How long a command's output is still read after it exited (a process it left behind
/// may hold its stdout open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long a helper may take to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// One command, as the daemon asks it.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    user: String,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    env: Vec<String>,
    cmd: Vec<String>,
    #[serde(default)]
    stdin: Option<Vec<u8>>,
    /// The command and its process group are killed after this long.
    limit_ms: u64,
}

/// What the helper says: `hello` first, then one answer per request.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hello: Option<u32>,
    #[serde(default)]
    id: u64,
    /// 128 + n after signal n, as the engine reports an exec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stdout: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stderr: Vec<u8>,
    /// It could not run, or ran past its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

// ---------------------------------------------------------------------------------
// The daemon's side.

/// Put the daemon's own executable where the workspace mounts it: `<state>/helper/`,
/// mode 0700 (root's only), by hard link (no copy of tens of MB) or else by copy; kept
/// when it is the same file. The directory, for the container's mount.
pub fn install(state_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = state_dir.join("helper");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let exe = std::env::current_exe()?;
    let target = dir.join(PROGRAM);
    let src = std::fs::metadata(&exe)?;
    if let Ok(cur) = std::fs::metadata(&target)
        && cur.dev() == src.dev()
        && cur.ino() == src.ino()
    {
        return Ok(dir);
    }
    let tmp = dir.join(format!(".{PROGRAM}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&exe, &tmp).is_err() {
        std::fs::copy(&exe, &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    // A rename: a helper running from the old file goes on undisturbed.
    std::fs::rename(&tmp, &target)?;
    Ok(dir)
}

/// Why a command did not run through the helper.
#[derive(Debug)]
pub enum HelperError {
    /// It was never handed to the helper (the helper is gone): run it another way.
    NotSent(String),
    /// The helper had it and then went away, or it ran past its limit: whether it ran
    /// is unknown, so it must not simply be run again.
    Lost(String),
}

/// The waiters for replies; `None` once the helper's output ended (nothing more is
/// taken: a request then was never handed over).
type Pending = std::sync::Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A running helper in one container.
pub struct Helper {
    input: Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl Helper {
    /// Start the helper in `container` (one exec, as root) and wait for its hello.
    pub async fn start(engine: &Engine, container: &str) -> Result<Self, String> {
        let spec = ExecSpec {
            user: "0".into(),
            cmd: vec![format!("{MOUNT_DIR}/{PROGRAM}"), HELPER_ARG.into()],
            ..ExecSpec::default()
        };
        // The exec's own start is bounded too: a stalled engine must not hold the
        // participant's request.
        let (_id, output, mut input) =
            tokio::time::timeout(HELLO_WITHIN, engine.exec_attached(container, spec))
                .await
                .map_err(|_| format!("the engine did not start the helper within {HELLO_WITHIN:?}"))??;
        let pending: Arc<Pending> = Arc::new(std::sync::Mutex::new(Some(HashMap::new())));
        let alive = Arc::new(AtomicBool::new(true));
        let (hello_tx, hello_rx) = oneshot::channel();
        tokio::spawn(read_replies(
            output,
            Arc::clone(&pending),
            Arc::clone(&alive),
            hello_tx,
        ));
        let why = match tokio::time::timeout(HELLO_WITHIN, hello_rx).await {
            Ok(Ok(Ok(PROTOCOL))) => {
                return Ok(Self {
                    input: Mutex::new(input),
                    pending,
                    alive,
                    next_id: AtomicU64::new(1),
                });
            }
            Ok(Ok(Ok(other))) => format!("the helper speaks version {other}, not {PROTOCOL}"),
            Ok(Ok(Err(why))) => why,
            Ok(Err(_)) => "the helper ended before it said hello".into(),
            Err(_) => format!("the helper said nothing within {HELLO_WITHIN:?}"),
        };
        // Its stdin closed, a helper that did start ends (nothing is left running).
        let _ = tokio::time::timeout(Duration::from_secs(2), input.shutdown()).await;
        Err(why)
    }

    /// Whether the helper still runs (its output has not ended).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Run `spec` through the helper to its end (killed after `limit`).
    pub async fn run(&self, spec: ExecSpec, limit: Duration) -> Result<ExecOutput, HelperError> {
        if !self.alive() {
            return Err(HelperError::NotSent("the helper has ended".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let req = Request {
            id,
            user: spec.user,
            workdir: spec.workdir,
            env: spec.env,
            cmd: spec.cmd,
            stdin: spec.stdin,
            limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        };
        let mut line = serde_json::to_vec(&req).map_err(|e| HelperError::NotSent(e.to_string()))?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(HelperError::NotSent("the helper has ended".into())),
        };
        let forget = || {
            if let Some(w) = self.pending.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                w.remove(&id);
            }
        };
        let mut input = self.input.lock().await;
        if let Err(e) = input.write_all(&line).await {
            drop(input);
            forget();
            self.alive.store(false, Ordering::SeqCst);
            // A line the helper never got whole is never run (it runs only lines that
            // end in a newline, and the newline is the last byte written).
            return Err(HelperError::NotSent(format!("writing to the helper: {e}")));
        }
        if let Err(e) = input.flush().await {
            drop(input);
            forget();
            self.alive.store(false, Ordering::SeqCst);
            // Written whole: it may run. Never run again another way.
            return Err(HelperError::Lost(format!("writing to the helper: {e}")));
        }
        drop(input);
        // The helper kills the command at `limit`; this is the backstop.
        let reply = match tokio::time::timeout(limit + Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(HelperError::Lost("the helper ended while the command ran".into())),
            Err(_) => {
                forget();
                return Err(HelperError::Lost(format!(
                    "no answer from the helper within {limit:?}"
                )));
            }
        };
        if let Some(e) = reply.error {
            return Err(HelperError::Lost(e));
        }
        Ok(ExecOutput {
            code: reply.code,
            stdout: reply.stdout,
            stderr: reply.stderr,
        })
    }
}

/// Hand each reply line to its waiter; the first is the hello. When the output ends,
/// every waiter learns (its sender dropped) and the helper is marked gone.
async fn read_replies(
    mut output: ExecStream,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    hello: oneshot::Sender<Result<u32, String>>,
) {
    let mut hello = Some(hello);
    let mut buf: Vec<u8> = Vec::new();
    let mut said: Vec<u8> = Vec::new();
    while let Some(chunk) = output.next().await {
        let bytes = match chunk {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => message,
            Ok(LogOutput::StdErr { message }) => {
                // Its own complaints (a C library it cannot load, a panic): kept for
                // the reason it did not start, and logged.
                said.extend_from_slice(&message);
                for line in String::from_utf8_lossy(&message).lines() {
                    tracing::debug!(target: "workspace_helper", "{line}");
                }
                continue;
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "the helper's output ended");
                break;
            }
        };
        buf.extend_from_slice(&bytes);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let reply: Reply = match serde_json::from_slice(&line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "the helper said something unreadable");
                    continue;
                }
            };
            if let Some(v) = reply.hello {
                if let Some(h) = hello.take() {
                    let _ = h.send(Ok(v));
                }
                continue;
            }
            if let Some(tx) = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .and_then(|w| w.remove(&reply.id))
            {
                let _ = tx.send(reply);
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
    if let Some(h) = hello.take() {
        let why = String::from_utf8_lossy(&said);
        let last = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output");
        let _ = h.send(Err(format!(
            "the helper ended before it said hello: {}",
            last.trim()
        )));
    }
    // Every waiter learns (its sender dropped); nothing more is taken.
    *pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

// ---------------------------------------------------------------------------------
// The helper's side, in the container.

/// Whether this process was started as the helper.
pub fn is_helper_invocation() -> bool {
    std::env::args_os().nth(1).as_deref() == Some(OsStr::new(HELPER_ARG))
}

/// For a binary without a runtime of its own yet (`lablink-local`): when started as the
/// helper, serve and exit; else return.
pub fn run_if_invoked() {
    if !is_helper_invocation() {
        return;
    }
    let code = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(serve()),
        Err(e) => {
            eprintln!("lablink helper: no runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// Serve requests from stdin until it closes; the process exit status.
pub async fn serve() -> i32 {
    let out = Arc::new(Mutex::new(tokio::io::stdout()));
    if say(
        &out,
        &Reply {
            hello: Some(PROTOCOL),
            ..Reply::default()
        },
    )
    .await
    .is_err()
    {
        return 1;
    }
    let mut input = BufReader::new(tokio::io::stdin());
    let mut buf: Vec<u8> = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    loop {
        let read = tokio::select! {
            // Finished requests are collected as they end. `read_until` may be cut short
            // here: what it read stays in `buf`, and the next call goes on from there.
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            read = input.read_until(b'\n', &mut buf) => read,
        };
        let line = match read {
            // Only a whole line (its newline read) is a request: a piece cut off by the
            // daemon's end is dropped, never run.
            Ok(n) if n > 0 && buf.ends_with(b"\n") => Ok(Some(std::mem::take(&mut buf))),
            Ok(n) if n > 0 => continue,
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        };
        match line {
            Ok(Some(line)) => {
                let req: Request = match serde_json::from_slice(&line) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("lablink helper: unreadable request: {e}");
                        continue;
                    }
                };
                let out = Arc::clone(&out);
                running.spawn(async move {
                    let id = req.id;
                    let reply = match run_request(req).await {
                        Ok(r) => r,
                        Err(e) => Reply {
                            id,
                            error: Some(e),
                            ..Reply::default()
                        },
                    };
                    let _ = say(&out, &reply).await;
                });
            }
            // The daemon is gone: what runs goes on to its end, as a `docker exec`'s
            // process does when its client goes (its output still read, so it never
            // dies of a closed pipe); then the helper ends.
            Ok(None) | Err(_) => {
                while running.join_next().await.is_some() {}
                return 0;
            }
        }
    }
}

async fn say(out: &Mutex<tokio::io::Stdout>, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut out = out.lock().await;
    out.write_all(&line).await?;
    out.flush().await
}

/// Who a process runs as: what runc takes from the container's `/etc/passwd` and
/// `/etc/group` for `docker exec -u` (moby/sys `user.GetExecUser`: a name or a uid; a
/// uid that is not in passwd runs with gid 0 and home `/`; the supplementary groups are
/// those that list the user's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolve `user` (a name or a uid) against the texts of `/etc/passwd` and `/etc/group`.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<ExecUser, String> {
    let numeric = user.parse::<u32>().ok();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid = f[2].parse::<u32>().ok()?;
        let gid = f[3].parse::<u32>().ok()?;
        (f[0] == user || numeric == Some(uid)).then(|| (f[0].to_owned(), uid, gid, f[5].to_owned()))
    });
    let (name, uid, gid, home) = match (entry, numeric) {
        (Some(e), _) => e,
        (None, Some(uid)) => (String::new(), uid, 0, "/".to_owned()),
        (None, None) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ));
        }
    };
    let mut groups: Vec<u32> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3)?;
            let gid = f.get(2)?.parse::<u32>().ok()?;
            (!name.is_empty() && members.split(',').any(|m| m.trim() == name)).then_some(gid)
        })
        .collect();
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

async fn run_request(req: Request) -> Result<Reply, String> {
    let passwd = tokio::fs::read_to_string("/etc/passwd").await.unwrap_or_default();
    let group = tokio::fs::read_to_string("/etc/group").await.unwrap_or_default();
    let who = resolve_user(&req.user, &passwd, &group)?;
    let (program, args) = req.cmd.split_first().ok_or("an empty command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("HOME", &who.home)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a command past its limit goes with its children.
        .process_group(0);
    for kv in &req.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    // The working directory is entered as the user, after the switch (as runc does):
    // a directory the user cannot enter (a symlink in their home) fails as it would for
    // `docker exec -w`.
    let workdir = match &req.workdir {
        Some(d) => {
            Some(std::ffi::CString::new(d.as_str()).map_err(|_| "a working directory with a NUL byte")?)
        }
        None => None,
    };
    let (uid, gid, groups) = (who.uid, who.gid, who.groups.clone());
    // SAFETY: a plain system call.
    let same_user = unsafe { libc::geteuid() } == uid;
    // SAFETY: between fork and exec only async-signal-safe calls (setgroups, setgid,
    // setuid, chdir are plain system calls); `groups` and `workdir` were allocated before
    // the fork. In the order runc uses, so the user keeps no group of root's.
    unsafe {
        cmd.pre_exec(move || {
            // The helper's own user (root, for the daemon's root steps) runs as the
            // helper does.
            if !same_user
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(d) = &workdir
                && libc::chdir(d.as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        // What `docker exec` reports for a program it cannot find (127) or run (126).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(Reply {
                id: req.id,
                code: Some(if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                }),
                stderr: format!("cannot run {program}: {e}").into_bytes(),
                ..Reply::default()
            });
        }
        Err(e) => return Err(format!("cannot run {program}: {e}")),
    };
    let pgid = child.id().map(|p| p as i32);
    if let (Some(bytes), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // A program that exits without reading its stdin is not an error.
            let _ = stdin.write_all(&bytes).await;
            let _ = stdin.shutdown().await;
        });
    }
    // The output is read as it comes, into buffers kept outside the readers: a command
    // that exits leaving a process behind with its stdout open ends when it exits (its
    // output then gets a short grace), as a `docker exec` does.
    let (out_buf, err_buf) = (
        Arc::new(std::sync::Mutex::new(Vec::new())),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let mut readers = tokio::task::JoinSet::new();
    if let Some(pipe) = child.stdout.take() {
        readers.spawn(tail_of(pipe, Arc::clone(&out_buf)));
    }
    if let Some(pipe) = child.stderr.take() {
        readers.spawn(tail_of(pipe, Arc::clone(&err_buf)));
    }
    let limit = Duration::from_millis(req.limit_ms);
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("waiting for {program}: {e}")),
        Err(_) => {
            if let Some(p) = pgid {
                // SAFETY: a plain system call on the command's own process group.
                unsafe {
                    libc::kill(-p, libc::SIGKILL);
                }
            }
            return Err(format!("did not finish within {limit:?}"));
        }
    };
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let take = |b: &Arc<std::sync::Mutex<Vec<u8>>>| {
        std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()))
    };
    Ok(Reply {
        id: req.id,
        code: status
            .code()
            .map(i64::from)
            .or_else(|| status.signal().map(|s| 128 + i64::from(s))),
        stdout: take(&out_buf),
        stderr: take(&err_buf),
        ..Reply::default()
    })
}

/// Read `pipe` to its end, keeping the last [`KEPT_OUTPUT`] bytes in `buf`.
async fn tail_of<R: tokio::io::AsyncRead + Unpin>(mut pipe: R, buf: Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(&chunk[..n]);
        if b.len() > KEPT_OUTPUT {
            let extra = b.len() - KEPT_OUTPUT;
            b.drain(..extra);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          client:x:1000:1000::/home/client:/bin/bash\n\
                          broken:x:oops\n";
    const GROUP: &str =
        "root:x:0:\nclient:x:1000:\nchrome-remote-desktop:x:999:client\nvideo:x:44:other,client\n";

    #[test]
    fn users_resolve_as_runc_resolves_docker_exec_u() {
        let c = resolve_user("client", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (1000, 1000, "/home/client"));
        assert_eq!(c.groups, vec![1000, 999, 44]);
        assert_eq!(resolve_user("1000", PASSWD, GROUP).unwrap(), c);
        let root = resolve_user("0", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.groups.clone()), (0, 0, vec![0]));
        // A uid passwd does not know: gid 0 and home /, no supplementary groups.
        let anon = resolve_user("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            (anon.uid, anon.gid, anon.home.as_str(), anon.groups.clone()),
            (4242, 0, "/", vec![0])
        );
        assert!(resolve_user("nobody-here", PASSWD, GROUP).is_err());
    }

    #[test]
    fn the_wire_round_trips() {
        let r = Request {
            id: 7,
            user: "client".into(),
            workdir: None,
            env: vec!["A=b".into()],
            cmd: vec!["true".into()],
            stdin: Some(b"1\n".to_vec()),
            limit_ms: 1000,
        };
        let back: Request = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(
            (back.id, back.stdin, back.limit_ms),
            (7, Some(b"1\n".to_vec()), 1000)
        );
        let hello: Reply = serde_json::from_str(r#"{"hello":1}"#).unwrap();
        assert_eq!(hello.hello, Some(PROTOCOL));
    }

    #[tokio::test]
    async fn a_request_runs_with_its_stdin_env_and_limit() {
        // As this test's own user: the helper runs its own user's commands as itself.
        let me = unsafe { libc::geteuid() }.to_string();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let home = resolve_user(&me, &passwd, &group).unwrap().home;
        let out = run_request(Request {
            id: 3,
            user: me.clone(),
            workdir: Some("/".into()),
            env: vec!["GREETING=hi".into()],
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "read x; echo \"$GREETING $x $HOME $(pwd)\"; echo oops >&2; exit 3".into(),
            ],
            stdin: Some(b"there\n".to_vec()),
            limit_ms: 5000,
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("hi there {home} /")
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");
        let t = std::time::Instant::now();
        let e = run_request(Request {
            id: 4,
            user: me.clone(),
            workdir: None,
            env: vec![],
            cmd: vec!["sh".into(), "-c".into(), "sleep 30 & sleep 30".into()],
            stdin: None,
            limit_ms: 300,
        })
        .await
        .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));

        // A process left behind with the output open: the command ends when it exits.
        let t = std::time::Instant::now();
        let out = run_request(Request {
            id: 5,
            user: me.clone(),
            workdir: None,
            env: vec![],
            cmd: vec!["sh".into(), "-c".into(), "sleep 30 & echo started".into()],
            stdin: None,
            limit_ms: 20_000,
        })
        .await
        .unwrap();
        assert_eq!(
            (out.code, String::from_utf8_lossy(&out.stdout).trim()),
            (Some(0), "started")
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

        // A program that is not there: 127, as `docker exec` reports it.
        let out = run_request(Request {
            id: 6,
            user: me,
            workdir: None,
            env: vec![],
            cmd: vec!["/nonexistent/nvidia-smi".into()],
            stdin: None,
            limit_ms: 5000,
        })
        .await
        .unwrap();
        assert_eq!(out.code, Some(127));
    }
}
