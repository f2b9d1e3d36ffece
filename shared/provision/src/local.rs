//! Compute without a cloud: each "instance" is a real `lablink-client-daemon` process on
//! this machine, enrolling with its job's secret like an EC2 VM would. With a client
//! image ([`LocalSettings::client_image`]) each daemon runs its own workspace container
//! on this machine's Docker engine, exactly as on EC2, and start-host is the image's.
//! Without one, a stand-in `start-host` records what it received (arguments and PIN) in
//! the VM's state dir and prints it (so it shows in the VM's logs); like Google's, it
//! refuses to run as root without `--user-name`. Terminating an instance stops its
//! process and removes its workspace container and home volume.

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
    /// Extra environment for every daemon (e.g. short report intervals in tests, the
    /// workspace's settings).
    pub extra_env: Vec<(String, String)>,
    /// The client image of every VM's workspace container (`LABLINK_CLIENT_IMAGE`);
    /// `None`: start-host is the stand-in, run on this machine as the desktop user.
    pub client_image: Option<String>,
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
/// `start-host.log` next to itself and echoes them to stderr. As root it refuses to run
/// without `--user-name`, with Google's message; a code containing `expired` fails as
/// an expired one does with Google's.
pub const STAND_IN_START_HOST: &str = r#"#!/bin/sh
# LabLink local stand-in for Chrome Remote Desktop's start-host: records what it got.
if [ "$(id -u)" = 0 ]; then
  case " $* " in
    *" --user-name="*) ;;
    *) echo "Must specify the --user-name option when running as root." >&2; exit 1 ;;
  esac
fi
dir=$(dirname "$0")
read -r pin1 || pin1=""
read -r pin2 || pin2=""
line="start-host args: $* | pin: $pin1 | pin again: $pin2"
echo "$line" >> "$dir/start-host.log"
echo "$line" >&2
# A code containing "expired" is refused, as Google refuses an expired one (to try the
# participant's "paste a new code" path locally).
case " $* " in
  *" --code="*expired*) echo "OAuth error: the authorization code has expired" >&2; exit 1 ;;
esac
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

    fn spawn(
        &self,
        instance_id: &str,
        secret: &str,
        overrides: &lablink_core::vm_settings::LaunchOverrides,
    ) -> std::io::Result<Child> {
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
            .env("LABLINK_NVIDIA_SMI", dir.join("no-nvidia-smi"))
            // No cloud-init here: its record, if this machine has one, is not this VM's.
            .env("LABLINK_CLOUD_INIT_STATUS", dir.join("no-cloud-init-status.json"))
            // The VM's log is its daemon's: shipped to POST /api/vm-logs (no AWS here).
            .env("LABLINK_DAEMON_LOG_FILE", dir.join("daemon.log"))
            .env("LABLINK_SHIP_LOGS", "")
            .env("LABLINK_LOG_SINK", "http");
        for var in ["DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        match &self.settings.client_image {
            // start-host, the desktop and the participant's files are the workspace's.
            Some(image) => {
                // A launch may choose another image or tutorial (as on EC2).
                cmd.env(
                    "LABLINK_CLIENT_IMAGE",
                    overrides.client_image.as_deref().unwrap_or(image),
                )
                .env("LABLINK_WORKSPACE_LABELS", self.runner_label());
            }
            None => {
                cmd.env("LABLINK_START_HOST", &start_host)
                    .env("LABLINK_CRD_CONFIG_DIR", dir.join("crd"))
                    // The stand-in runs as whoever runs this runner (as root, with
                    // Google's --user-name).
                    .env("LABLINK_DESKTOP_USER", current_user())
                    // The participant's files for data export: `<vm dir>/workspace`.
                    .env("LABLINK_EXPORT_DIR", dir.join("workspace"));
            }
        }
        cmd.envs(
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
        for (i, host) in spec.hostnames.iter().enumerate() {
            // A new VM starts with an empty disk, as an EC2 instance does: a workspace an
            // earlier run left under this hostname (a fresh database numbers VMs from
            // 001 again) must not be adopted, with its registration and files.
            if self.settings.client_image.is_some() {
                remove_container_and_volume(host.as_str()).await;
            }
            let id = format!("local-{:04}", self.next.fetch_add(1, Ordering::Relaxed));
            let child = self
                .spawn(&id, spec.enrollment_secret.expose(), &spec.overrides)
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
                self.remove_workspace(&vm).await;
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
            self.remove_workspace(&vm).await;
        }
    }

    /// The label of this runner's workspace containers (its state dir).
    fn runner_label(&self) -> String {
        format!("lablink.local-runner={}", self.settings.state_dir.display())
    }

    /// Remove the workspaces an earlier run of this runner left behind (it was killed
    /// outright): a new VM must never inherit an old one's container or registration.
    /// Returns how many.
    pub async fn remove_stale_workspaces(&self) -> usize {
        if self.settings.client_image.is_none() {
            return 0;
        }
        let filter = format!("label={}", self.runner_label());
        let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "--all",
                "--filter",
                &filter,
                "--format",
                "{{.Label \"lablink.hostname\"}}",
            ])
            .stdin(Stdio::null())
            .output()
            .await
        else {
            return 0;
        };
        let hosts: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        for host in &hosts {
            remove_container_and_volume(host).await;
        }
        hosts.len()
    }

    /// A terminated VM's workspace goes with it, as an EC2 instance's disk does.
    async fn remove_workspace(&self, vm: &LocalVm) {
        if let (Some(_), Some(host)) = (&self.settings.client_image, &vm.hostname) {
            remove_container_and_volume(host).await;
        }
    }
}

async fn remove_container_and_volume(host: &str) {
    {
        let container = format!("lablink-workspace-{host}");
        let volume = format!("lablink-home-{host}");
        for args in [
            vec!["rm", "--force", "--volumes", container.as_str()],
            vec!["volume", "rm", "--force", volume.as_str()],
        ] {
            let out = Command::new("docker")
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .await;
            if let Ok(o) = out
                && !o.status.success()
            {
                tracing::warn!(
                    error = %String::from_utf8_lossy(&o.stderr).trim(),
                    "cannot remove a local VM's workspace"
                );
            }
        }
    }
}

impl LocalCompute {
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

/// The user this runner runs as (the stand-in start-host's desktop user).
fn current_user() -> String {
    // SAFETY: getpwuid with our own uid; the entry is read at once, on this thread, before
    // any other passwd lookup could replace it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return "root".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
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
        image_id: None,
    }
}
