//! The workshop's VM settings (classic `config.yaml`: machine type, client image,
//! tutorial repository, subject software, startup script and its on-error policy, plus
//! the desktop user and disk size): deploy parameters with defaults, three of them
//! overridable per launch. Checked here once, by the deploy's validator, the launch
//! route and the provisioner alike; errors name the field.
//!
//! Must not: know how the settings reach a VM (that is `lablink-provision`'s user-data).

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::config::Settings;

/// The largest startup script carried in a VM's user-data (base64'd there: 8 KiB becomes
/// about 11 KB of EC2's 16 KB). A bigger one is refused at deploy and at launch; put
/// larger set-up in the client image or the tutorial repository.
pub const MAX_STARTUP_SCRIPT_BYTES: usize = 8 * 1024;
pub const DEFAULT_INSTANCE_TYPE: &str = "g4dn.xlarge";
/// The classic LabLink client base image (XFCE, Chrome Remote Desktop, Chrome, SLEAP,
/// user `client`).
pub const DEFAULT_CLIENT_IMAGE: &str = "ghcr.io/talmolab/lablink-client-base-image:linux-amd64-latest";

/// What a failing startup script does (the daemon's `LABLINK_STARTUP_ON_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Continue,
    Fail,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Continue => "continue",
            OnError::Fail => "fail",
        }
    }

    pub fn parse(s: &str) -> Result<Self, SettingsError> {
        match s {
            "continue" => Ok(OnError::Continue),
            "fail" => Ok(OnError::Fail),
            _ => Err(SettingsError::new("startup_on_error", "must be continue or fail")),
        }
    }
}

/// A setting that is not acceptable, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SettingsError {
    pub field: &'static str,
    pub problem: String,
}

impl SettingsError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// The workshop's VM settings: deploy parameters with defaults; instance type, client
/// image and tutorial repository may be overridden per launch ([`LaunchOverrides`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    #[serde(default = "default_client_image")]
    pub client_image: String,
    #[serde(default)]
    pub tutorial_repo: Option<String>,
    #[serde(default)]
    pub subject_software: Option<String>,
    /// The script itself (not a path): it travels in user-data.
    #[serde(default)]
    pub startup_script: Option<String>,
    #[serde(default)]
    pub startup_on_error: OnError,
    #[serde(default = "default_desktop_user")]
    pub desktop_user: String,
    #[serde(default = "default_disk_gb")]
    pub disk_gb: u32,
}

fn default_instance_type() -> String {
    DEFAULT_INSTANCE_TYPE.into()
}
fn default_client_image() -> String {
    DEFAULT_CLIENT_IMAGE.into()
}
fn default_desktop_user() -> String {
    "client".into()
}
fn default_disk_gb() -> u32 {
    100
}

impl Default for VmSettings {
    fn default() -> Self {
        Self {
            instance_type: default_instance_type(),
            client_image: default_client_image(),
            tutorial_repo: None,
            subject_software: None,
            startup_script: None,
            startup_on_error: OnError::Continue,
            desktop_user: default_desktop_user(),
            disk_gb: default_disk_gb(),
        }
    }
}

/// What one launch may change, kept on its job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tutorial_repo: Option<String>,
}

impl VmSettings {
    /// The settings from the environment (the deploy parameters: `LABLINK_INSTANCE_TYPE`,
    /// `LABLINK_CLIENT_IMAGE`, `LABLINK_TUTORIAL_REPO`, `LABLINK_SUBJECT_SOFTWARE`,
    /// `LABLINK_STARTUP_SCRIPT_B64`, `LABLINK_STARTUP_ON_ERROR`, `LABLINK_DESKTOP_USER`,
    /// `LABLINK_VM_DISK_GB`), defaults for the unset ones, each checked; a bad one is
    /// reported under its variable's name.
    pub fn read(s: &mut Settings) -> Option<VmSettings> {
        let text = |s: &Settings, name: &str| s.raw(name).map(|v| v.trim().to_owned());
        let mut vm = VmSettings {
            tutorial_repo: text(s, "LABLINK_TUTORIAL_REPO"),
            subject_software: text(s, "LABLINK_SUBJECT_SOFTWARE"),
            ..VmSettings::default()
        };
        if let Some(v) = text(s, "LABLINK_INSTANCE_TYPE") {
            vm.instance_type = v;
        }
        if let Some(v) = text(s, "LABLINK_CLIENT_IMAGE") {
            vm.client_image = v;
        }
        if let Some(v) = text(s, "LABLINK_DESKTOP_USER") {
            vm.desktop_user = v;
        }
        vm.disk_gb = s.ranged("LABLINK_VM_DISK_GB", 100, 30, 2000);
        if let Some(on) = s.optional_with("LABLINK_STARTUP_ON_ERROR", "continue or fail", OnError::parse) {
            vm.startup_on_error = on;
        }
        vm.startup_script = s.optional_with(
            "LABLINK_STARTUP_SCRIPT_B64",
            "the startup script in base64",
            |v: &str| -> Result<String, String> {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| e.to_string())?;
                String::from_utf8(bytes).map_err(|_| "the script is not UTF-8 text".to_owned())
            },
        );
        match vm.check() {
            Ok(()) => Some(vm),
            Err(e) => {
                let var = match e.field {
                    "instance_type" => "LABLINK_INSTANCE_TYPE",
                    "client_image" => "LABLINK_CLIENT_IMAGE",
                    "tutorial_repo" => "LABLINK_TUTORIAL_REPO",
                    "subject_software" => "LABLINK_SUBJECT_SOFTWARE",
                    "startup_script" => "LABLINK_STARTUP_SCRIPT_B64",
                    "desktop_user" => "LABLINK_DESKTOP_USER",
                    "disk_gb" => "LABLINK_VM_DISK_GB",
                    _ => "LABLINK_STARTUP_ON_ERROR",
                };
                s.report(var, format!("is invalid: {}", e.problem), "a valid VM setting");
                None
            }
        }
    }
}

impl LaunchOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Each given override checked (an empty tutorial repository means "none").
    pub fn check(&self) -> Result<(), SettingsError> {
        if let Some(t) = &self.instance_type {
            check_instance_type(t)?;
        }
        if let Some(i) = &self.client_image {
            check_client_image(i)?;
        }
        if let Some(r) = self.tutorial_repo.as_deref().filter(|r| !r.is_empty()) {
            check_tutorial_repo(r)?;
        }
        Ok(())
    }
}

pub fn no_space(field: &'static str, v: &str) -> Result<(), SettingsError> {
    if v.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'' || c == '\\')
    {
        return Err(SettingsError::new(
            field,
            "must not contain spaces, quotes or control characters",
        ));
    }
    Ok(())
}

pub fn check_instance_type(v: &str) -> Result<(), SettingsError> {
    let ok = v.len() <= 32
        && v.split_once('.').is_some_and(|(family, size)| {
            !family.is_empty()
                && !size.is_empty()
                && family
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && size.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(SettingsError::new(
            "instance_type",
            format!("{v:?} is not an EC2 instance type like g4dn.xlarge"),
        ))
    }
}

pub fn check_client_image(v: &str) -> Result<(), SettingsError> {
    no_space("client_image", v)?;
    if v.is_empty() || v.starts_with('-') || v.len() > 255 {
        return Err(SettingsError::new(
            "client_image",
            "must be an image reference like ghcr.io/org/image:tag",
        ));
    }
    Ok(())
}

pub fn check_tutorial_repo(v: &str) -> Result<(), SettingsError> {
    no_space("tutorial_repo", v)?;
    let scheme_ok = ["https://", "http://", "git://", "ssh://"]
        .iter()
        .any(|s| v.starts_with(s))
        || (v.contains('@') && v.contains(':') && !v.starts_with('-'));
    // Credentials in the URL would reach the participant (the workspace's environment),
    // the VM's log and the job page: a private repository needs another way in.
    if let Some((_, rest)) = v.split_once("://")
        && rest
            .split('/')
            .next()
            .is_some_and(|authority| authority.contains('@'))
        && !v.starts_with("ssh://")
    {
        return Err(SettingsError::new(
            "tutorial_repo",
            "must not carry credentials (user@ or user:token@); the participant and the logs would see them",
        ));
    }
    if !scheme_ok || v.len() > 1024 {
        return Err(SettingsError::new(
            "tutorial_repo",
            format!("{v:?} is not a git URL like https://github.com/org/repo.git"),
        ));
    }
    Ok(())
}

impl VmSettings {
    /// Every field checked; the error names the field.
    pub fn check(&self) -> Result<(), SettingsError> {
        check_instance_type(&self.instance_type)?;
        check_client_image(&self.client_image)?;
        if let Some(r) = &self.tutorial_repo {
            check_tutorial_repo(r)?;
        }
        if let Some(s) = &self.subject_software {
            no_space("subject_software", s)?;
            if s.is_empty() || s.len() > 64 || s.contains('/') {
                return Err(SettingsError::new(
                    "subject_software",
                    "must be a program name like sleap",
                ));
            }
        }
        if let Some(s) = &self.startup_script {
            if s.len() > MAX_STARTUP_SCRIPT_BYTES {
                return Err(SettingsError::new(
                    "startup_script",
                    format!(
                        "is {} bytes; at most {MAX_STARTUP_SCRIPT_BYTES} fit in a VM's user-data (put larger set-up in the client image or the tutorial repository)",
                        s.len()
                    ),
                ));
            }
            if s.contains('\0') {
                return Err(SettingsError::new("startup_script", "must be text"));
            }
        }
        let u = &self.desktop_user;
        let user_ok = !u.is_empty()
            && u.len() <= 32
            && u.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && u.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !user_ok || u == "root" {
            return Err(SettingsError::new(
                "desktop_user",
                format!("{u:?} is not a non-root user name like client"),
            ));
        }
        if !(30..=2000).contains(&self.disk_gb) {
            return Err(SettingsError::new("disk_gb", "must be between 30 and 2000"));
        }
        Ok(())
    }

    /// These settings with a launch's overrides applied (each checked).
    pub fn with(&self, o: &LaunchOverrides) -> Result<Self, SettingsError> {
        let mut s = self.clone();
        if let Some(t) = &o.instance_type {
            s.instance_type = t.clone();
        }
        if let Some(i) = &o.client_image {
            s.client_image = i.clone();
        }
        if let Some(r) = &o.tutorial_repo {
            s.tutorial_repo = Some(r.clone()).filter(|r| !r.is_empty());
        }
        s.check()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_name_the_field() {
        let ok = VmSettings::default();
        ok.check().unwrap();
        let bad = |f: fn(&mut VmSettings), field: &str| {
            let mut s = VmSettings::default();
            f(&mut s);
            let e = s.check().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        bad(|s| s.instance_type = "huge".into(), "instance_type");
        bad(|s| s.client_image = "img with space".into(), "client_image");
        bad(|s| s.tutorial_repo = Some("/etc/passwd".into()), "tutorial_repo");
        bad(
            |s| s.tutorial_repo = Some("--upload-pack=evil".into()),
            "tutorial_repo",
        );
        bad(|s| s.desktop_user = "root".into(), "desktop_user");
        bad(|s| s.desktop_user = "Client".into(), "desktop_user");
        bad(|s| s.disk_gb = 8, "disk_gb");
        bad(
            |s| s.startup_script = Some("x".repeat(MAX_STARTUP_SCRIPT_BYTES + 1)),
            "startup_script",
        );
        bad(|s| s.subject_software = Some("a b".into()), "subject_software");
        assert!(OnError::parse("abort").is_err());
        let o = LaunchOverrides {
            instance_type: Some("g5.2xlarge".into()),
            client_image: None,
            tutorial_repo: Some(String::new()),
        };
        let s = VmSettings {
            tutorial_repo: Some("https://github.com/talmolab/sleap-tutorial-data.git".into()),
            ..VmSettings::default()
        }
        .with(&o)
        .unwrap();
        assert_eq!((s.instance_type.as_str(), s.tutorial_repo), ("g5.2xlarge", None));
        let o = LaunchOverrides {
            instance_type: Some("nope".into()),
            ..LaunchOverrides::default()
        };
        assert_eq!(VmSettings::default().with(&o).unwrap_err().field, "instance_type");
    }
}
