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

/// The subject software to look for (classic `SUBJECT_SOFTWARE`): a process matches
/// when the name is part of its own name (`comm`) or of the file name of its argv[0] or
/// argv[1] (an entry point run by an interpreter, `python /usr/bin/sleap-label`), so
/// `sleap` matches `sleap-label`. Written `=name`, the name must match exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSoftware {
    name: String,
    exact: bool,
}

impl SubjectSoftware {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, exact) = match s.strip_prefix('=') {
            Some(n) => (n, true),
            None => (s, false),
        };
        if name.is_empty() || name.len() > 255 || name.contains(['/', '\0']) {
            return Err(format!(
                "--subject-software {s:?}: expected a program name like sleap (or =sleap-label to match exactly)"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            exact,
        })
    }

    /// The name looked for (without the `=` of an exact match).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn matches_name(&self, candidate: &str) -> bool {
        if self.exact {
            candidate == self.name
        } else {
            candidate.contains(&self.name)
        }
    }

    /// Whether the process with this `comm` and NUL-separated `cmdline` is the software.
    pub fn matches(&self, comm: &str, cmdline: &[u8]) -> bool {
        // `comm` is cut at 15 bytes: only an exact match on a longer name must skip it.
        if self.matches_name(comm.trim()) {
            return true;
        }
        cmdline.split(|b| *b == 0).take(2).any(|arg| {
            Path::new(&*String::from_utf8_lossy(arg))
                .file_name()
                .is_some_and(|f| self.matches_name(&f.to_string_lossy()))
        })
    }

    /// Whether one of `pids` (all of this host's processes when `None`) is the software.
    pub fn running(&self, pids: Option<&[u32]>) -> bool {
        let check = |dir: &Path| {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            self.matches(&comm, &cmdline)
        };
        match pids {
            Some(pids) => pids
                .iter()
                .any(|p| check(&Path::new("/proc").join(p.to_string()))),
            None => std::fs::read_dir("/proc").is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        && check(&e.path())
                })
            }),
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

    #[test]
    fn the_subject_software_matches_by_part_of_its_name_or_exactly() {
        let sleap = SubjectSoftware::parse("sleap").unwrap();
        let exact = SubjectSoftware::parse("=sleap-label").unwrap();
        let cmd = |args: &[&str]| args.join("\0").into_bytes();
        // The GUI's entry point, by its own name and by a Python interpreter's argv[1].
        assert!(sleap.matches("sleap-label", &cmd(&["/usr/bin/sleap-label"])));
        assert!(sleap.matches(
            "python3",
            &cmd(&["/usr/bin/python3", "/opt/conda/bin/sleap-label", "x.slp"])
        ));
        assert!(
            !sleap.matches("bash", &cmd(&["bash", "-c", "echo sleap"])),
            "only argv[0..2]'s names"
        );
        assert!(exact.matches("sleap-label", b""));
        assert!(!exact.matches("sleap-train", &cmd(&["/usr/bin/sleap-train"])));
        assert!(!exact.matches("python3", &cmd(&["python3", "/x/sleap-label-old"])));
        for bad in ["", "=", "a/b"] {
            assert!(SubjectSoftware::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_a_running_process_by_part_of_its_name_and_among_given_pids() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let sle = SubjectSoftware::parse("slee").unwrap();
        // `spawn` returns once the child is forked; its name is `sleep` only after exec.
        // (Other processes named sleep may run meanwhile: look at ours first.)
        let seen = (0..200).any(|_| {
            sle.running(Some(&[pid])) || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                false
            }
        });
        assert!(seen, "our running sleep is found by its pid within 2 s");
        assert!(sle.running(None), "and among all the host's processes");
        assert!(!sle.running(Some(&[])), "not among no processes");
        assert!(
            !SubjectSoftware::parse("surely-no-such-process-name")
                .unwrap()
                .running(None)
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
