//! A launched VM's user-data: a cloud-config generated from typed settings (never a
//! shell script assembled by `format!`). It writes the daemon's settings (the job's
//! enrollment secret in a root-only file), the admin's startup script, the systemd unit,
//! and the bootstrap script (`bootstrap/lablink-bootstrap.sh`: fetch the daemon with
//! the VM's role, check its SHA-256, start it), and runs that script. It installs nothing
//! the default image (AWS's Deep Learning Base GPU AMI: driver, Docker, the NVIDIA
//! container toolkit, the AWS CLI) already has.
//!
//! Owns: the workshop's VM settings ([`VmSettings`]: deploy defaults, some overridable
//! per launch), their checks, and the size limit. Must not: put a secret on a command
//! line, or produce user-data EC2 would refuse (16 KB, raw).

use base64::Engine;
pub use lablink_core::vm_settings::{
    DEFAULT_CLIENT_IMAGE, DEFAULT_INSTANCE_TYPE, LaunchOverrides, MAX_STARTUP_SCRIPT_BYTES, OnError,
    SettingsError, VmSettings,
};
use lablink_ops::JobId;
use serde_json::{Value, json};

/// EC2's limit on user-data, before base64 (AWS EC2 User Guide, "instance user data").
pub const USER_DATA_LIMIT: usize = 16 * 1024;
/// The bootstrap script user-data writes and runs (tested as is, see the tests).
pub const BOOTSTRAP_SCRIPT: &str = include_str!("bootstrap/lablink-bootstrap.sh");
/// AWS's public SSM parameter naming the current Deep Learning Base OSS Nvidia Driver GPU
/// AMI (Ubuntu 24.04, x86_64): NVIDIA driver, Docker, NVIDIA container toolkit, the AWS CLI.
/// (AWS's naming rule: docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html; the
/// Ubuntu 22.04 DLAMI's patches end 2027-04-30.)
pub const DEFAULT_AMI_PARAMETER: &str =
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id";

/// A workshop settings file (JSON; `config/examples/`): the VM settings, with the
/// startup script given as a file next to it. Read as the deploy reads it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkshopFile {
    #[serde(default)]
    instance_type: Option<String>,
    #[serde(default)]
    client_image: Option<String>,
    #[serde(default)]
    tutorial_repo: Option<String>,
    #[serde(default)]
    subject_software: Option<String>,
    /// Relative to the settings file.
    #[serde(default)]
    startup_script_file: Option<std::path::PathBuf>,
    #[serde(default)]
    startup_on_error: Option<String>,
    #[serde(default)]
    desktop_user: Option<String>,
    #[serde(default)]
    disk_gb: Option<u32>,
}

/// Read and check a workshop settings file; the error names the file and the field.
pub fn load_workshop_file(path: &std::path::Path) -> Result<VmSettings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: WorkshopFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let d = VmSettings::default();
    let startup_script =
        match &f.startup_script_file {
            Some(p) => {
                let full = path.parent().unwrap_or(std::path::Path::new(".")).join(p);
                Some(std::fs::read_to_string(&full).map_err(|e| {
                    format!("{}: startup_script_file {}: {e}", path.display(), full.display())
                })?)
            }
            None => None,
        };
    let vm = VmSettings {
        instance_type: f.instance_type.unwrap_or(d.instance_type),
        client_image: f.client_image.unwrap_or(d.client_image),
        tutorial_repo: f.tutorial_repo.filter(|r| !r.is_empty()),
        subject_software: f.subject_software.filter(|r| !r.is_empty()),
        startup_script,
        startup_on_error: match f.startup_on_error.as_deref() {
            None => OnError::Continue,
            Some(v) => OnError::parse(v).map_err(|e| format!("{}: {e}", path.display()))?,
        },
        desktop_user: f.desktop_user.unwrap_or(d.desktop_user),
        disk_gb: f.disk_gb.unwrap_or(d.disk_gb),
    };
    vm.check().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(vm)
}

/// Where the deployment put the client daemon, and its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArtifact {
    pub bucket: String,
    pub key: String,
    /// Lowercase hex SHA-256 of the binary.
    pub sha256: String,
    pub region: String,
}

impl DaemonArtifact {
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(SettingsError::new(
                "daemon_sha256",
                "must be 64 lowercase hex digits",
            ));
        }
        // bootstrap.env is sourced by a root shell: only characters no shell reads twice.
        for (field, v) in [
            ("daemon_bucket", &self.bucket),
            ("daemon_key", &self.key),
            ("region", &self.region),
        ] {
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
            {
                return Err(SettingsError::new(
                    field,
                    "must be letters, digits and . _ / - only",
                ));
            }
        }
        Ok(())
    }
}

/// Everything one launch's user-data carries.
pub struct Bootstrap<'a> {
    pub job: &'a JobId,
    pub api_url: &'a str,
    pub log_group: &'a str,
    pub enrollment_secret: &'a str,
    pub daemon: &'a DaemonArtifact,
    pub vm: &'a VmSettings,
}

/// Why user-data cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "the VM's user-data would be {0} bytes; EC2 takes at most {USER_DATA_LIMIT} (shorten the startup script)"
    )]
    TooLarge(usize),
}

const UNIT: &str = "[Unit]
Description=LabLink client daemon
Wants=network-online.target
After=network-online.target docker.service

[Service]
Type=exec
EnvironmentFile=/etc/lablink/client.env
ExecStart=/usr/local/bin/lablink-client-daemon
StandardError=append:/var/log/lablink-client.log
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
";

/// The bootstrap script as user-data carries it: without its comment lines (the shebang
/// kept), gzip'd (cloud-init's `write_files` encoding `gz+b64`), so it costs a fraction
/// of EC2's 16 KB, which the startup script shares.
pub fn bootstrap_script() -> String {
    BOOTSTRAP_SCRIPT
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || !l.trim_start().starts_with('#'))
        .map(|(_, l)| format!("{l}\n"))
        .collect()
}

/// [`bootstrap_script`], gzip'd and base64'd.
pub fn bootstrap_script_gz_b64() -> String {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bootstrap_script().as_bytes())
        .expect("gzip into memory cannot fail");
    let bytes = gz.finish().expect("gzip into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn env_file(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

impl Bootstrap<'_> {
    /// The cloud-config, as a value (what the YAML text says).
    pub fn config(&self) -> Result<Value, BootstrapError> {
        self.vm.check()?;
        self.daemon.check()?;
        let vm = self.vm;
        let mut client: Vec<(&str, &str)> = vec![
            ("LABLINK_API_URL", self.api_url),
            ("LABLINK_HOLDER_URL", self.api_url),
            ("LABLINK_ENROLL_SECRET", self.enrollment_secret),
            ("LABLINK_STATE_DIR", "/var/lib/lablink"),
            ("LABLINK_LOG_GROUP", self.log_group),
            // Logs go to POST /api/vm-logs with the VM's credential (its own stream only),
            // not to CloudWatch (whose IAM cannot limit a VM to its own stream).
            ("LABLINK_LOG_SINK", "http"),
            ("LABLINK_DAEMON_LOG_FILE", "/var/log/lablink-client.log"),
            ("LABLINK_CLIENT_IMAGE", &vm.client_image),
            ("LABLINK_DESKTOP_USER", &vm.desktop_user),
            ("LABLINK_STARTUP_ON_ERROR", vm.startup_on_error.as_str()),
        ];
        if let Some(r) = &vm.tutorial_repo {
            client.push(("LABLINK_TUTORIAL_REPO", r));
        }
        if let Some(s) = &vm.subject_software {
            client.push(("LABLINK_SUBJECT_SOFTWARE", s));
        }
        if vm.startup_script.is_some() {
            client.push(("LABLINK_STARTUP_SCRIPT", "/etc/lablink/startup-script"));
        }
        let bootstrap = env_file(&[
            ("LABLINK_DAEMON_BUCKET", &self.daemon.bucket),
            ("LABLINK_DAEMON_KEY", &self.daemon.key),
            ("LABLINK_DAEMON_SHA256", &self.daemon.sha256),
            ("LABLINK_AWS_REGION", &self.daemon.region),
        ]);
        let mut files = vec![
            json!({"path": "/etc/lablink/client.env", "owner": "root:root", "permissions": "0600",
                   "content": env_file(&client)}),
            json!({"path": "/etc/lablink/bootstrap.env", "owner": "root:root", "permissions": "0600",
                   "content": bootstrap}),
            json!({"path": "/etc/systemd/system/lablink-client.service", "owner": "root:root",
                   "permissions": "0644", "content": UNIT}),
            json!({"path": "/usr/local/sbin/lablink-bootstrap", "owner": "root:root",
                   "permissions": "0700", "encoding": "gz+b64", "content": bootstrap_script_gz_b64()}),
        ];
        if let Some(script) = &vm.startup_script {
            files.push(
                json!({"path": "/etc/lablink/startup-script", "owner": "root:root",
                "permissions": "0700", "encoding": "b64",
                "content": base64::engine::general_purpose::STANDARD.encode(script)}),
            );
        }
        Ok(json!({
            "write_files": files,
            "runcmd": [["/usr/local/sbin/lablink-bootstrap"]],
        }))
    }

    /// The user-data text: `#cloud-config` and YAML, checked against EC2's size limit.
    pub fn user_data(&self) -> Result<String, BootstrapError> {
        let config = self.config()?;
        let mut out = format!(
            "#cloud-config\n# LabLink VM bootstrap for job {}. Holds only the job's enrollment secret\n# (in the root-only /etc/lablink/client.env); the daemon exchanges it once for\n# this VM's own credential.\n",
            self.job
        );
        yaml(&config, 0, &mut out);
        if out.len() > USER_DATA_LIMIT {
            return Err(BootstrapError::TooLarge(out.len()));
        }
        Ok(out)
    }
}

/// A small YAML writer: maps and lists in block style, every string a double-quoted
/// scalar (JSON's escapes are YAML's), so no value can change the structure.
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                out.push_str(&format!("{pad}{k}:"));
                match val {
                    Value::Object(_) | Value::Array(_) => {
                        out.push('\n');
                        yaml(val, indent + 2, out);
                    }
                    scalar => out.push_str(&format!(" {scalar}\n")),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(map) => {
                        // `- first: x` then the other keys aligned under it.
                        let mut first = true;
                        for (k, val) in map {
                            let lead = if first {
                                format!("{pad}- ")
                            } else {
                                format!("{pad}  ")
                            };
                            first = false;
                            out.push_str(&format!("{lead}{k}:"));
                            match val {
                                Value::Object(_) | Value::Array(_) => {
                                    out.push('\n');
                                    yaml(val, indent + 4, out);
                                }
                                scalar => out.push_str(&format!(" {scalar}\n")),
                            }
                        }
                    }
                    Value::Array(_) => {
                        // An argv: a flow sequence of quoted strings.
                        out.push_str(&format!("{pad}- {item}\n"));
                    }
                    scalar => out.push_str(&format!("{pad}- {scalar}\n")),
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{scalar}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn daemon() -> DaemonArtifact {
        DaemonArtifact {
            bucket: "cdk-hnb659fds-assets-123456789012-us-west-2".into(),
            key: "0f1e2d3c.bin".into(),
            sha256: "a".repeat(64),
            region: "us-west-2".into(),
        }
    }

    #[test]
    fn the_largest_allowed_startup_script_fits_and_strings_cannot_break_the_yaml() {
        let job = JobId::parse("20261123T101500Z-0a1b2c3d").unwrap();
        let vm = VmSettings {
            tutorial_repo: Some("https://github.com/talmolab/sleap-tutorial-data.git".into()),
            startup_script: Some(
                "#!/bin/sh\n".to_owned() + &"echo 'x: - [y]' \"#\"\n".repeat(MAX_STARTUP_SCRIPT_BYTES / 20),
            ),
            ..VmSettings::default()
        };
        let d = daemon();
        let b = Bootstrap {
            job: &job,
            api_url: "https://abc.execute-api.us-west-2.amazonaws.com",
            log_group: "lablink-cloud-init-prod",
            enrollment_secret: "s3cret-enroll",
            daemon: &d,
            vm: &vm,
        };
        let ud = b.user_data().unwrap();
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.len() <= USER_DATA_LIMIT, "{} bytes", ud.len());
        // The secret only in the root-only env file's content.
        assert_eq!(ud.matches("s3cret-enroll").count(), 1);
        let config = b.config().unwrap();
        let files = config["write_files"].as_array().unwrap();
        // The bootstrap travels gzip'd; cloud-init unpacks it to the script as written.
        let boot = files
            .iter()
            .find(|f| f["path"] == "/usr/local/sbin/lablink-bootstrap")
            .unwrap();
        assert_eq!(boot["encoding"], "gz+b64");
        let gz = base64::engine::general_purpose::STANDARD
            .decode(boot["content"].as_str().unwrap())
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut text).unwrap();
        assert_eq!(text, bootstrap_script());
        assert!(text.contains("lablink-imds-guard") && !text.contains("\n# "));
        let env = files
            .iter()
            .find(|f| f["path"] == "/etc/lablink/client.env")
            .unwrap();
        assert_eq!(env["permissions"], "0600");
        assert!(
            env["content"]
                .as_str()
                .unwrap()
                .contains("LABLINK_ENROLL_SECRET=s3cret-enroll\n")
        );
        assert_eq!(config["runcmd"], json!([["/usr/local/sbin/lablink-bootstrap"]]));
        // Past EC2's limit (here through a long API URL): refused, with the size.
        let long_url = format!("https://{}.example.org", "a".repeat(3000));
        let b = Bootstrap {
            api_url: &long_url,
            ..b
        };
        match b.user_data() {
            Err(BootstrapError::TooLarge(n)) => assert!(n > USER_DATA_LIMIT),
            other => panic!("{other:?}"),
        }
    }
}
