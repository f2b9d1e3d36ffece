//! Compute without a cloud: each "instance" is a real `lablink-client-daemon` process on
//! this machine, enrolling with its job's secret like an EC2 VM would, with a stand-in
//! `start-host` that records what it received (arguments and PIN) in its state dir and
//! prints it (so it shows in the VM's logs). Terminating an instance stops its process.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};

use lablink_core::domain::Hostname;
use lablink_ops::JobId;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::compute::{Compute, ComputeError, Instance, LaunchSpec};

/// What the local provider needs.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The daemon program (`lablink-client-daemon`, or `lablink-local` itself) and the
    /// arguments that make it the daemon (e.g. `client-daemon`).
    pub daemon_bin: PathBuf,
    pub daemon_args: Vec<String>,
    /// The API the daemons call, and the holder they poll.
    pub api_url: String,
    pub holder_url: String,
    /// Each VM gets `<state_dir>/<instance id>/`.
    pub state_dir: PathBuf,
    /// Extra environment for every daemon (e.g. short report intervals in tests).
    pub extra_env: Vec<(String, String)>,
}

struct LocalVm {
    job: JobId,
    hostname: Option<String>,
    launch_index: i32,
    child: Child,
}

pub struct LocalCompute {
    settings: LocalSettings,
    vms: Mutex<BTreeMap<String, LocalVm>>,
    next: AtomicU32,
}

/// The stand-in start-host: appends its arguments and the PIN lines it read to
/// `start-host.log` next to itself and echoes them to stderr.
pub const STAND_IN_START_HOST: &str = r#"#!/bin/sh
# LabLink local stand-in for Chrome Remote Desktop's start-host: records what it got.
dir=$(dirname "$0")
read -r pin1 || pin1=""
read -r pin2 || pin2=""
line="start-host args: $* | pin: $pin1 | pin again: $pin2"
echo "$line" >> "$dir/start-host.log"
echo "$line" >&2
"#;

impl LocalCompute {
    pub fn new(settings: LocalSettings) -> Self {
        Self {
            settings,
            vms: Mutex::new(BTreeMap::new()),
            next: AtomicU32::new(1),
        }
    }

    /// The state dir of a local instance (its daemon's files and `start-host.log`).
    pub fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.settings.state_dir.join(instance_id)
    }

    fn spawn(&self, instance_id: &str, secret: &str) -> std::io::Result<Child> {
        let dir = self.instance_dir(instance_id);
        std::fs::create_dir_all(&dir)?;
        let start_host = dir.join("start-host");
        std::fs::write(&start_host, STAND_IN_START_HOST)?;
        std::fs::set_permissions(&start_host, std::fs::Permissions::from_mode(0o755))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))?;
        let mut cmd = Command::new(&self.settings.daemon_bin);
        cmd.args(&self.settings.daemon_args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LABLINK_API_URL", &self.settings.api_url)
            .env("LABLINK_HOLDER_URL", &self.settings.holder_url)
            .env("LABLINK_INSTANCE_ID", instance_id)
            .env("LABLINK_ENROLL_SECRET", secret)
            .env("LABLINK_STATE_DIR", &dir)
            .env("LABLINK_CREDENTIAL_FILE", dir.join("credential"))
            .env("LABLINK_START_HOST", &start_host)
            .env("LABLINK_CRD_CONFIG_DIR", dir.join("crd"))
            .env("LABLINK_NVIDIA_SMI", dir.join("no-nvidia-smi"))
            // The VM's log is its daemon's: shipped to POST /api/vm-logs (no AWS here).
            .env("LABLINK_DAEMON_LOG_FILE", dir.join("daemon.log"))
            .env("LABLINK_SHIP_LOGS", "")
            .env("LABLINK_LOG_SINK", "http")
            // The participant's files for data export: `<vm dir>/workspace`.
            .env("LABLINK_EXPORT_DIR", dir.join("workspace"))
            .envs(
                self.settings
                    .extra_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        // A local VM dies with the runner, even when the runner is killed outright (no
        // orphaned daemons polling an API that is gone).
        // SAFETY: between fork and exec only `prctl`, which is async-signal-safe, runs.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }
}

#[async_trait::async_trait]
impl Compute for LocalCompute {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn job_instances(&self, job: &JobId) -> Result<Vec<Instance>, ComputeError> {
        let mut vms = self.vms.lock().await;
        reap(&mut vms);
        Ok(vms
            .iter()
            .filter(|(_, v)| &v.job == job)
            .map(|(id, v)| instance(id, v))
            .collect())
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Vec<Instance>, ComputeError> {
        let mut vms = self.vms.lock().await;
        let mut out = Vec::new();
        for i in 0..spec.hostnames.len() {
            let id = format!("local-{:04}", self.next.fetch_add(1, Ordering::Relaxed));
            let child = self
                .spawn(&id, spec.enrollment_secret.expose())
                .map_err(|e| ComputeError(format!("starting {}: {e}", self.settings.daemon_bin.display())))?;
            let vm = LocalVm {
                job: spec.job.clone(),
                hostname: None,
                launch_index: i as i32,
                child,
            };
            out.push(instance(&id, &vm));
            vms.insert(id, vm);
        }
        Ok(out)
    }

    async fn name(&self, pairs: &[(String, Hostname)]) -> Result<(), ComputeError> {
        let mut vms = self.vms.lock().await;
        for (id, host) in pairs {
            if let Some(vm) = vms.get_mut(id) {
                vm.hostname = Some(host.as_str().to_owned());
            }
        }
        Ok(())
    }

    async fn fleet(&self) -> Result<Vec<Instance>, ComputeError> {
        let mut vms = self.vms.lock().await;
        reap(&mut vms);
        Ok(vms.iter().map(|(id, v)| instance(id, v)).collect())
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ComputeError> {
        let mut vms = self.vms.lock().await;
        for id in instance_ids {
            if let Some(mut vm) = vms.remove(id) {
                terminate_child(&mut vm.child).await;
            }
        }
        Ok(())
    }
}

impl LocalCompute {
    /// Stop every local VM (the runner's Ctrl-C).
    pub async fn shutdown(&self) {
        let mut vms = self.vms.lock().await;
        for (_, mut vm) in std::mem::take(&mut *vms) {
            terminate_child(&mut vm.child).await;
        }
    }

    /// Stop one VM's daemon without forgetting it (a VM that stopped answering).
    pub async fn stop_daemon(&self, instance_id: &str) -> bool {
        let mut vms = self.vms.lock().await;
        match vms.get_mut(instance_id) {
            Some(vm) => {
                terminate_child(&mut vm.child).await;
                true
            }
            None => false,
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s.
async fn terminate_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Collect exit statuses. A VM whose daemon exited stays listed (like an instance whose
/// daemon crashed: it stops reporting); only terminate removes it.
fn reap(vms: &mut BTreeMap<String, LocalVm>) {
    for vm in vms.values_mut() {
        let _ = vm.child.try_wait();
    }
}

fn instance(id: &str, vm: &LocalVm) -> Instance {
    Instance {
        instance_id: id.to_owned(),
        hostname: vm.hostname.clone(),
        launch_index: vm.launch_index,
    }
}
