//! The periodic checks: GPU health (`nvidia-smi`) and in-use (the subject software's
//! process present). Each posts only on change, and keeps going whatever happens (the
//! classic GPU check gave up for good when nvidia-smi was missing).

use std::path::Path;
use std::time::Duration;

use lablink_core::domain::GpuHealth;
use tokio::process::Command;

use crate::api::Api;
use crate::software::SubjectSoftware;

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

/// Post GPU health every `interval`, on change only.
pub async fn gpu_loop(api: &Api, nvidia_smi: &Path, interval: Duration) {
    let mut posted: Option<GpuHealth> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let now = gpu_health(nvidia_smi).await;
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
}
