//! Flags and environment (every flag has a `LABLINK_*` variable; systemd passes them
//! through `EnvironmentFile=`, see `dist/lablink-client.env`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lablink_core::domain::{Hostname, START_HOST_PATH};

#[derive(Debug, Clone, Parser)]
#[command(name = "lablink-client-daemon", version, about)]
pub struct Args {
    /// Base URL of the LabLink API (the API Gateway URL, or the local runner).
    #[arg(long, env = "LABLINK_API_URL")]
    pub api_url: reqwest::Url,

    /// Base URL of the holder that answers `POST /vm_startup` (default: the API URL,
    /// where API Gateway routes it to the holder).
    #[arg(long, env = "LABLINK_HOLDER_URL")]
    pub holder_url: Option<reqwest::Url>,

    /// This VM's hostname as LabLink knows it (default: the system's hostname).
    #[arg(long, env = "LABLINK_HOSTNAME")]
    pub hostname: Option<String>,

    /// A provisioned VM's first boot: its launch job's enrollment secret (from
    /// user-data). With no credential yet, the daemon enrolls (`POST /api/enroll`) and
    /// saves the hostname and credential it receives.
    #[arg(long, env = "LABLINK_ENROLL_SECRET", hide_env_values = true)]
    pub enroll_secret: Option<String>,

    /// The instance id to enroll with (default: from EC2's IMDSv2).
    #[arg(long, env = "LABLINK_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// File holding this VM's credential (one line). Without it (and without
    /// LABLINK_CREDENTIAL) the daemon makes classic unauthenticated calls, which only a
    /// deployment in legacy mode accepts.
    #[arg(
        long,
        env = "LABLINK_CREDENTIAL_FILE",
        default_value = "/etc/lablink/credential"
    )]
    pub credential_file: PathBuf,

    /// The credential itself (prefer the file: the environment is visible to more readers).
    #[arg(long, env = "LABLINK_CREDENTIAL", hide_env_values = true)]
    pub credential: Option<String>,

    /// Where the daemon remembers what it has done (assignment, posted timings).
    #[arg(long, env = "LABLINK_STATE_DIR", default_value = "/var/lib/lablink")]
    pub state_dir: PathBuf,

    /// Chrome Remote Desktop's start-host program.
    #[arg(long, env = "LABLINK_START_HOST", default_value = START_HOST_PATH)]
    pub start_host: PathBuf,

    /// Longest start-host may run before it is killed, and longest the desktop host may
    /// take to run once start-host registered it (then the VM reports `error`).
    #[arg(long, env = "LABLINK_START_HOST_TIMEOUT_SECONDS", default_value_t = 120)]
    pub start_host_timeout_seconds: u64,

    /// Chrome Remote Desktop's host config directory: a `host#*.json` there means this
    /// host is registered already and the daemon does not wait for an assignment.
    #[arg(long, env = "LABLINK_CRD_CONFIG_DIR")]
    pub crd_config_dir: Option<PathBuf>,

    /// The hold window asked of the holder (`?wait=`); 25 s fits behind API Gateway.
    #[arg(long, env = "LABLINK_POLL_WAIT_SECONDS", default_value_t = 25)]
    pub poll_wait_seconds: u64,

    /// The GPU check program.
    #[arg(long, env = "LABLINK_NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,

    #[arg(long, env = "LABLINK_GPU_INTERVAL_SECONDS", default_value_t = 20)]
    pub gpu_interval_seconds: u64,

    /// The subject software whose process means a participant is using the VM (classic
    /// SUBJECT_SOFTWARE, e.g. `sleap`): a process matches when this is part of its name
    /// or of its argv[0]'s (or, for an interpreter, argv[1]'s) file name, so `sleap`
    /// matches `sleap-label`; `=sleap-label` matches that name exactly. Looked for in the
    /// workspace container when there is one. Without it in-use is not reported.
    #[arg(long, env = "LABLINK_SUBJECT_SOFTWARE")]
    pub subject_software: Option<String>,

    /// The client image of the participant's workspace (classic `image_name`, e.g. the
    /// LabLink client base image). With it the daemon pulls the image, runs ONE
    /// workspace container for this VM on the host's Docker engine and runs start-host
    /// inside it as the desktop user; without it start-host runs on the host.
    #[arg(long, env = "LABLINK_CLIENT_IMAGE")]
    pub client_image: Option<String>,

    /// The non-root user whose desktop the participant gets (the client image's user).
    #[arg(long, env = "LABLINK_DESKTOP_USER", default_value = "client")]
    pub desktop_user: String,

    /// A git repository cloned onto the desktop user's Desktop in the workspace (classic
    /// `repository`). A failed clone is reported, not fatal.
    #[arg(long, env = "LABLINK_TUTORIAL_REPO")]
    pub tutorial_repo: Option<String>,

    /// The admin's startup script (a file on the VM), run once per workspace container,
    /// as root inside it, after the clone.
    #[arg(long, env = "LABLINK_STARTUP_SCRIPT")]
    pub startup_script: Option<PathBuf>,

    /// What a failing startup script does: `continue` (the VM serves, the failure is
    /// reported) or `fail` (the VM reports `error` and stays out of the pool).
    #[arg(long, env = "LABLINK_STARTUP_ON_ERROR", default_value = "continue")]
    pub startup_on_error: String,

    /// Longest the startup script may run before it counts as failed.
    #[arg(long, env = "LABLINK_STARTUP_TIMEOUT_SECONDS", default_value_t = 3600)]
    pub startup_timeout_seconds: u64,

    /// Extra labels for the workspace container, comma-separated `key=value` (the local
    /// runner marks its VMs' containers with one, to find them after a crash).
    #[arg(long, env = "LABLINK_WORKSPACE_LABELS", default_value = "")]
    pub workspace_labels: String,

    /// Attempts at pulling the client image before the VM reports `error` (then it
    /// tries again every minute).
    #[arg(long, env = "LABLINK_PULL_ATTEMPTS", default_value_t = 5)]
    pub pull_attempts: u32,

    /// cloud-init's own record of its stages (the start-up timings' cloud-init phase).
    #[arg(
        long,
        env = "LABLINK_CLOUD_INIT_STATUS",
        default_value = "/var/lib/cloud/data/status.json"
    )]
    pub cloud_init_status: PathBuf,

    #[arg(long, env = "LABLINK_INUSE_INTERVAL_SECONDS", default_value_t = 20)]
    pub inuse_interval_seconds: u64,

    /// Log files to ship, comma-separated `tag=path` (cloud-init's output by default).
    #[arg(
        long,
        env = "LABLINK_SHIP_LOGS",
        default_value = "cloud-init=/var/log/cloud-init-output.log"
    )]
    pub ship_logs: String,

    /// This daemon's own log file (its stderr, appended by systemd), shipped as `daemon`.
    #[arg(long, env = "LABLINK_DAEMON_LOG_FILE")]
    pub daemon_log_file: Option<PathBuf>,

    /// Where logs go: `cloudwatch` (PutLogEvents to --log-group, stream = hostname),
    /// `http` (`POST /api/vm-logs` with this VM's credential) or `none`. Default:
    /// `cloudwatch` when --log-group is set, else `http`.
    #[arg(long, env = "LABLINK_LOG_SINK")]
    pub log_sink: Option<String>,

    /// The CloudWatch log group (`lablink-cloud-init-<env>`).
    #[arg(long, env = "LABLINK_LOG_GROUP")]
    pub log_group: Option<String>,

    /// Data export: the participant's files. Files with the export's extensions under it
    /// are sent (symbolic links are never followed). Default: the workspace's home
    /// volume with a client image, `/home` without.
    #[arg(long, env = "LABLINK_EXPORT_DIR")]
    pub export_dir: Option<PathBuf>,
}

/// What a failing startup script does to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Continue,
    Fail,
}

/// The workspace's settings (a client image is configured).
#[derive(Debug, Clone)]
pub struct WorkspaceConfig {
    pub image: String,
    pub tutorial_repo: Option<String>,
    pub startup_script: Option<PathBuf>,
    pub startup_on_error: OnError,
    pub startup_timeout: Duration,
    pub pull_attempts: u32,
    /// Extra `key=value` labels of the container.
    pub labels: Vec<String>,
}

/// Where shipped logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    CloudWatch { group: String },
    Http { group: String },
    None,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub ship_logs: Vec<crate::logship::Source>,
    pub log_sink: LogSink,
    pub api_url: reqwest::Url,
    pub holder_url: reqwest::Url,
    pub hostname: Hostname,
    pub credential: Option<String>,
    pub state_dir: PathBuf,
    pub start_host: PathBuf,
    pub start_host_timeout: Duration,
    pub crd_config_dir: Option<PathBuf>,
    pub poll_wait: Duration,
    pub nvidia_smi: PathBuf,
    pub gpu_interval: Duration,
    pub subject_software: Option<crate::software::SubjectSoftware>,
    pub inuse_interval: Duration,
    pub cloud_init_status: PathBuf,
    /// `None`: the workspace's home volume (with a client image) or `/home`.
    pub export_dir: Option<PathBuf>,
    pub desktop_user: String,
    pub workspace: Option<WorkspaceConfig>,
}

impl Config {
    /// Where the data export looks for the participant's files (`/home` unless set; the
    /// daemon sets the workspace's home volume when it has one).
    pub fn export_dir(&self) -> PathBuf {
        self.export_dir.clone().unwrap_or_else(|| PathBuf::from("/home"))
    }
}

/// A POSIX user name as useradd takes it (so it is never an option or a path).
fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--desktop-user {name:?}: expected a user name like client (lowercase letters, digits, _ and -)"
        ))
    }
}

/// A repository URL git may clone: never an option, no whitespace or control characters.
fn check_repo(url: &str) -> Result<(), String> {
    if url.starts_with('-') || url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "--tutorial-repo {url:?}: expected a git URL (https://..., git://..., file://...) without spaces"
        ));
    }
    Ok(())
}

impl Args {
    /// Where an enrolled VM keeps the hostname and credential it was given, together
    /// (written atomically: see `crate::enroll`).
    pub fn enrollment_file(&self) -> PathBuf {
        self.state_dir.join("enrollment.json")
    }

    /// What enrollment gave this VM (`None`: not enrolled, or the record is unreadable,
    /// which `into_config` reports).
    fn enrolled(&self) -> Option<lablink_wire::Enrollment> {
        let text = std::fs::read_to_string(self.enrollment_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether this VM still has to enroll: it has an enrollment secret and no credential.
    pub fn needs_enrollment(&self) -> bool {
        self.enroll_secret.as_deref().is_some_and(|s| !s.is_empty())
            && self.credential.as_deref().is_none_or(str::is_empty)
            && self.enrolled().is_none()
            && std::fs::read_to_string(&self.credential_file).map_or(true, |c| c.trim().is_empty())
    }

    /// Check everything; the error names the flag.
    pub fn into_config(self) -> Result<Config, String> {
        let record_file = self.enrollment_file();
        let enrolled = match std::fs::read_to_string(&record_file) {
            Ok(text) => Some(
                serde_json::from_str::<lablink_wire::Enrollment>(&text)
                    .map_err(|e| format!("{}: not an enrollment record: {e}", record_file.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", record_file.display())),
        };
        let (enrolled_host, enrolled_credential) = match enrolled {
            Some(r) => (Some(r.hostname), Some(r.credential)),
            None => (None, None),
        };
        // A VM enrolled by an earlier daemon kept its hostname in a file of its own.
        let legacy_host = || {
            std::fs::read_to_string(self.state_dir.join("hostname"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let raw_host = match self.hostname.clone().or(enrolled_host).or_else(legacy_host) {
            Some(h) => h,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("--hostname not given and the system hostname is unreadable: {e}"))?,
        };
        let hostname = Hostname::parse(&raw_host).map_err(|e| format!("--hostname {raw_host:?}: {e}"))?;
        let credential = match self.credential.or(enrolled_credential) {
            Some(c) => Some(c.trim().to_owned()),
            None => match std::fs::read_to_string(&self.credential_file) {
                Ok(s) => Some(s.trim().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(format!(
                        "--credential-file {}: {e}",
                        self.credential_file.display()
                    ));
                }
            },
        }
        .filter(|c| !c.is_empty());
        for (name, v) in [
            ("--poll-wait-seconds", self.poll_wait_seconds),
            ("--gpu-interval-seconds", self.gpu_interval_seconds),
            ("--inuse-interval-seconds", self.inuse_interval_seconds),
            ("--start-host-timeout-seconds", self.start_host_timeout_seconds),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let mut ship_logs = Vec::new();
        for item in self.ship_logs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (tag, path) = item
                .split_once('=')
                .ok_or_else(|| format!("--ship-logs {item:?}: expected tag=path"))?;
            if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!(
                    "--ship-logs {item:?}: the tag must be letters, digits and dashes"
                ));
            }
            ship_logs.push(crate::logship::Source {
                tag: tag.to_owned(),
                path: PathBuf::from(path),
            });
        }
        if let Some(p) = &self.daemon_log_file {
            ship_logs.push(crate::logship::Source {
                tag: "daemon".into(),
                path: p.clone(),
            });
        }
        let group = self.log_group.clone().filter(|g| !g.is_empty());
        let log_sink = match (self.log_sink.as_deref(), group) {
            (Some("none"), _) => LogSink::None,
            (Some("cloudwatch"), Some(g)) | (None, Some(g)) => LogSink::CloudWatch { group: g },
            (Some("cloudwatch"), None) => return Err("--log-sink cloudwatch needs --log-group".into()),
            (Some("http"), g) | (None, g) => LogSink::Http {
                group: g.unwrap_or_else(|| "lablink-cloud-init-local".into()),
            },
            (Some(other), _) => {
                return Err(format!("--log-sink {other:?}: expected cloudwatch, http or none"));
            }
        };
        let home_crd =
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/chrome-remote-desktop"));
        check_user_name(&self.desktop_user)?;
        let startup_on_error = match self.startup_on_error.as_str() {
            "continue" => OnError::Continue,
            "fail" => OnError::Fail,
            other => {
                return Err(format!("--startup-on-error {other:?}: expected continue or fail"));
            }
        };
        if self.startup_timeout_seconds == 0 || self.pull_attempts == 0 {
            return Err("--startup-timeout-seconds and --pull-attempts must be at least 1".into());
        }
        let subject_software = match self.subject_software.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(crate::software::SubjectSoftware::parse(s)?),
        };
        let workspace = match self.client_image.map(|i| i.trim().to_owned()) {
            None => None,
            Some(i) if i.is_empty() => None,
            Some(image) => {
                if image.starts_with('-') || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!(
                        "--client-image {image:?}: expected an image reference like repo/name:tag"
                    ));
                }
                let tutorial_repo = self
                    .tutorial_repo
                    .map(|r| r.trim().to_owned())
                    .filter(|r| !r.is_empty());
                if let Some(r) = &tutorial_repo {
                    check_repo(r)?;
                }
                // Read when the workspace is prepared: a missing file is the VM's `error`
                // (with the reason, on the admin's page), not a daemon that cannot start.
                let startup_script = self.startup_script.filter(|p| !p.as_os_str().is_empty());
                let mut labels = Vec::new();
                for l in self
                    .workspace_labels
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                {
                    let ok = l.split_once('=').is_some_and(|(k, _)| {
                        !k.is_empty()
                            && k.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    });
                    if !ok || l.chars().any(char::is_control) {
                        return Err(format!("--workspace-labels {l:?}: expected key=value"));
                    }
                    labels.push(l.to_owned());
                }
                Some(WorkspaceConfig {
                    labels,
                    image,
                    tutorial_repo,
                    startup_script,
                    startup_on_error,
                    startup_timeout: Duration::from_secs(self.startup_timeout_seconds),
                    pull_attempts: self.pull_attempts,
                })
            }
        };
        Ok(Config {
            ship_logs,
            log_sink,
            holder_url: self.holder_url.unwrap_or_else(|| self.api_url.clone()),
            api_url: self.api_url,
            hostname,
            credential,
            cloud_init_status: self.cloud_init_status,
            state_dir: self.state_dir,
            start_host: self.start_host,
            start_host_timeout: Duration::from_secs(self.start_host_timeout_seconds),
            crd_config_dir: self.crd_config_dir.or(home_crd),
            poll_wait: Duration::from_secs(self.poll_wait_seconds),
            nvidia_smi: self.nvidia_smi,
            gpu_interval: Duration::from_secs(self.gpu_interval_seconds),
            subject_software,
            inuse_interval: Duration::from_secs(self.inuse_interval_seconds),
            export_dir: self.export_dir,
            desktop_user: self.desktop_user,
            workspace,
        })
    }
}
