//! The periodic checks: GPU health (`nvidia-smi`) and in-use (the subject software's
//! process present). Each posts only on change, and keeps going whatever happens (the
//! classic GPU check gave up for good when nvidia-smi was missing).

use std::path::Path;
use std::time::Duration;

use lablink_core::domain::GpuHealth;
use tokio::process::Command;

use crate::api::Api;

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

/// Whether a process named `name` runs (its `comm`, or its argv[0]'s file name, which
/// is what a Python entry point like `sleap-label` shows as).
pub fn process_running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            return false;
        }
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == name) {
            return true;
        }
        std::fs::read(p.join("cmdline")).is_ok_and(|c| {
            c.split(|b| *b == 0).take(2).any(|arg| {
                Path::new(&*String::from_utf8_lossy(arg))
                    .file_name()
                    .is_some_and(|f| f == name)
            })
        })
    })
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
pub async fn inuse_loop(api: &Api, name: &str, interval: Duration) {
    let mut posted: Option<bool> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let name = name.to_owned();
        let now = tokio::task::spawn_blocking(move || process_running(&name))
            .await
            .unwrap_or(false);
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
    fn finds_a_running_process_by_name() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        // `spawn` returns once the child is forked; its name is `sleep` only after exec.
        let seen = (0..200).any(|_| {
            process_running("sleep") || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                false
            }
        });
        assert!(seen, "a running sleep is found within 2 s");
        assert!(!process_running("surely-no-such-process-name"));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
