//! The periodic checks: GPU health (`nvidia-smi` on the host and, once the workspace
//! runs with the GPU, inside it) and in-use (the subject software's process present).
//! Each posts only on change, and keeps going whatever happens (the classic GPU check
//! gave up for good when nvidia-smi was missing).

use std::path::Path;
use std::time::Duration;

use lablink_core::domain::GpuHealth;
use tokio::process::Command;

use crate::api::Api;
use crate::engine::{ExecOutput, ExecSpec};
use crate::software::SubjectSoftware;
use crate::workspace::Workspace;

/// One GPU check: `N/A` when the program is absent, `Healthy` when it exits 0,
/// `Unhealthy` when it fails or hangs.
pub async fn gpu_health(nvidia_smi: &Path) -> GpuHealth {
    let run = Command::new(nvidia_smi)
        .env_remove("LABLINK_CREDENTIAL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(15), run).await {
        Err(_) => {
            tracing::warn!("nvidia-smi did not answer within 15 s");
            GpuHealth::Unhealthy
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => GpuHealth::NotAvailable,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot run nvidia-smi");
            GpuHealth::Unhealthy
        }
        Ok(Ok(out)) if out.status.success() => GpuHealth::Healthy,
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .chain(String::from_utf8_lossy(&out.stdout).lines())
                .next()
                .map(str::to_owned);
            tracing::warn!(status = %out.status, output = first.unwrap_or_default(), "nvidia-smi failed");
            GpuHealth::Unhealthy
        }
    }
}

/// Whether the subject software runs: in the workspace container when there is one (its
/// processes, by their host pids), else anywhere on the host.
pub async fn in_use_now(
    software: &SubjectSoftware,
    workspace: Option<&crate::workspace::Workspace>,
) -> Option<bool> {
    let pids = match workspace {
        Some(w) => match w.pids().await {
            Ok(p) => Some(p),
            Err(e) => {
                // A stopped or missing workspace runs nothing.
                tracing::debug!(error = %e, "cannot list the workspace's processes");
                Some(Vec::new())
            }
        },
        None => None,
    };
    let software = software.clone();
    tokio::task::spawn_blocking(move || software.running(pids.as_deref()))
        .await
        .ok()
}

/// What `nvidia-smi` run in the workspace says of its GPU: `None` when it could not run
/// there (no running container yet: the host's answer stands), `Unhealthy` when it
/// fails (NVIDIA's "Failed to initialize NVML: Unknown Error" after a host
/// `systemctl daemon-reload` cut the container off, docs.nvidia.com/datacenter/
/// cloud-native/container-toolkit/latest/troubleshooting.html; or no nvidia-smi at all:
/// the GPU was not given to the container).
pub fn workspace_gpu_verdict(out: Result<ExecOutput, String>) -> Option<GpuHealth> {
    match out {
        Err(e) => {
            tracing::debug!(error = %e, "nvidia-smi could not run in the workspace");
            None
        }
        Ok(o) if o.success() => Some(GpuHealth::Healthy),
        Ok(o) => {
            tracing::warn!(
                code = ?o.code,
                output = %o.last_line(),
                "nvidia-smi fails in the workspace: the desktop has no GPU although the host has one"
            );
            Some(GpuHealth::Unhealthy)
        }
    }
}

/// The GPU as the desktop sees it: the host's check, and while the workspace runs with
/// the GPU (`gpu_given`), `nvidia-smi` inside it as root (a host that looks healthy can
/// have a container that lost its GPU).
pub async fn desktop_gpu_health(
    nvidia_smi: &Path,
    workspace: Option<&Workspace>,
    gpu_given: bool,
) -> GpuHealth {
    let host = gpu_health(nvidia_smi).await;
    let (GpuHealth::Healthy, true, Some(ws)) = (host, gpu_given, workspace) else {
        return host;
    };
    let spec = ExecSpec {
        user: "0".into(),
        cmd: vec!["nvidia-smi".into()],
        ..ExecSpec::default()
    };
    workspace_gpu_verdict(ws.exec(spec, Duration::from_secs(15)).await).unwrap_or(host)
}

/// Post GPU health every `interval`, on change only.
pub async fn gpu_loop(
    api: &Api,
    nvidia_smi: &Path,
    interval: Duration,
    workspace: Option<&Workspace>,
    gpu_given: bool,
) {
    let mut posted: Option<GpuHealth> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let now = desktop_gpu_health(nvidia_smi, workspace, gpu_given).await;
        if posted == Some(now) {
            continue;
        }
        match api.gpu_health(now).await {
            Ok(()) => {
                tracing::info!(gpu = now.as_str(), "GPU health reported");
                posted = Some(now);
            }
            Err(e) => tracing::warn!(error = %e, "cannot report GPU health; will retry"),
        }
    }
}

/// Post in-use every `interval`, on change only.
pub async fn inuse_loop(
    api: &Api,
    software: &SubjectSoftware,
    workspace: Option<&crate::workspace::Workspace>,
    interval: Duration,
) {
    let mut posted: Option<bool> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let Some(now) = in_use_now(software, workspace).await else {
            continue;
        };
        if posted == Some(now) {
            continue;
        }
        match api.in_use(now).await {
            Ok(()) => {
                tracing::info!(in_use = now, "in-use reported");
                posted = Some(now);
            }
            Err(e) => tracing::warn!(error = %e, "cannot report in-use; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gpu_health_maps_absence_success_and_failure() {
        assert_eq!(
            gpu_health(Path::new("/nonexistent/nvidia-smi")).await,
            GpuHealth::NotAvailable
        );
        assert_eq!(gpu_health(Path::new("/bin/true")).await, GpuHealth::Healthy);
        assert_eq!(gpu_health(Path::new("/bin/false")).await, GpuHealth::Unhealthy);
    }

    #[test]
    fn nvidia_smi_in_the_workspace_decides_once_it_can_run_there() {
        let out = |code: i64, stderr: &str| {
            Ok(ExecOutput {
                code: Some(code),
                stdout: Vec::new(),
                stderr: stderr.as_bytes().to_vec(),
            })
        };
        assert_eq!(workspace_gpu_verdict(out(0, "")), Some(GpuHealth::Healthy));
        assert_eq!(
            workspace_gpu_verdict(out(255, "Failed to initialize NVML: Unknown Error")),
            Some(GpuHealth::Unhealthy),
            "the container lost its GPU while the host kept it"
        );
        assert_eq!(
            workspace_gpu_verdict(out(127, "exec: nvidia-smi: not found")),
            Some(GpuHealth::Unhealthy),
            "the GPU was never given to the container"
        );
        assert_eq!(
            workspace_gpu_verdict(Err("the workspace container is not running".into())),
            None,
            "no workspace yet: the host's answer stands"
        );
    }
}
