//! What a VM reports to the API, daemon → API, and the API's answers: status, GPU health,
//! in-use, start-up timings and log lines.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `POST /api/vm-status`, daemon → API:
/// `{"hostname":"lablink-vm-001","status":"error","reason":"start-host failed: ..."}`.
/// `status` is `initializing`, `running` or `error` (`lablink_core::domain::VmStatus`
/// parses it, classic aliases included); `reason` is ours, optional, and left out when
/// there is none (a `running` VM may carry one too: what went wrong without stopping it,
/// e.g. a tutorial repository that could not be cloned). `start_host` is ours, optional:
/// the outcome of the start-host run this report follows. Answered with a
/// [`Message`](crate::Message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatusReport {
    pub hostname: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_host: Option<StartHostOutcome>,
    /// Ours, optional: the reset (an admin's release, [`ResetOrder`](crate::ResetOrder))
    /// this report completes: the workspace is new and the VM may rejoin the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
}

/// How Chrome Remote Desktop's start-host ended, daemon → API inside a
/// [`VmStatusReport`]: `{"ok":false,"exit_code":1,"output":"OAuth error: ..."}`.
/// `exit_code` is absent when it did not exit by itself (killed at the timeout, or it
/// could not start); `output` is the last lines of its stderr (stdout when stderr was
/// empty), with the code and the PIN already removed by the daemon. `assignment` names
/// the assignment the run was for ([`assignment_key`](crate::assignment_key)): the
/// server acknowledges that assignment only, so an outcome of an older code never
/// settles a newer one. (Absent from daemons before it; then the current one is meant.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartHostOutcome {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<String>,
}

/// `POST /api/gpu_health`, daemon → API: `{"hostname":"lablink-vm-001","gpu_status":true}`
/// (`false` when unhealthy, `"N/A"` without a GPU). Answered with a
/// [`Message`](crate::Message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuHealthReport {
    pub hostname: String,
    pub gpu_status: GpuStatus,
}

/// The value of `gpu_status`: a JSON boolean or a JSON string. Daemons send `true`,
/// `false` or `"N/A"`; `lablink_core::domain::GpuHealth` reads it, and also takes the
/// stored names (`"Healthy"`, ...) as text. Anything else (a number, `null`) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuStatus {
    /// `true`: healthy; `false`: unhealthy.
    Bool(bool),
    /// `"N/A"` from a daemon; any string from a classic client.
    Text(String),
}

impl GpuStatus {
    /// What a daemon sends when it has no GPU or no `nvidia-smi`.
    pub const NOT_AVAILABLE: &str = "N/A";

    pub fn not_available() -> Self {
        Self::Text(Self::NOT_AVAILABLE.to_owned())
    }
}

impl Serialize for GpuStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for GpuStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GpuStatus;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"N/A\"")
            }
            fn visit_bool<E>(self, v: bool) -> Result<GpuStatus, E> {
                Ok(GpuStatus::Bool(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<GpuStatus, E> {
                Ok(GpuStatus::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<GpuStatus, E> {
                Ok(GpuStatus::Text(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `POST /api/update_inuse_status`, daemon → API:
/// `{"hostname":"lablink-vm-001","status":true}` (whether the subject software runs).
/// Answered with a [`Message`](crate::Message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InUseReport {
    pub hostname: String,
    pub status: bool,
}

/// `POST /api/vm-metrics/{hostname}`, daemon → API: the VM's start-up timings (seed 004
/// §3.3), RFC 3339 strings, each optional, left out when absent:
/// `{"cloud_init_start":"2025-11-13T10:00:00Z","cloud_init_end":"2025-11-13T10:05:30Z","container_start":"2025-11-13T10:03:00Z","container_end":"2025-11-13T10:05:30Z"}`.
///
/// Strings, not times: `lablink_core::domain::StartupTimings::parse` checks them and names
/// the bad field (an empty string counts as absent). `container_ready` is the classic
/// name of `container_end` (read as it, written as `container_end`). The image pull keeps
/// its classic keys (`docker_pull_*`); `tutorial_clone_*` and `startup_script_*` are ours
/// (the workspace's phases). Other keys are ignored. Answered with a [`MetricsAccepted`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawTimings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_pull_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_pull_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_start: Option<String>,
    #[serde(default, alias = "container_ready", skip_serializing_if = "Option::is_none")]
    pub container_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tutorial_clone_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tutorial_clone_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_script_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_script_end: Option<String>,
}

/// `POST /api/vm-metrics/{hostname}`, API → daemon, 200:
/// `{"message":"VM metrics posted successfully.","total_startup_seconds":330.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsAccepted {
    pub message: String,
    pub total_startup_seconds: f64,
}

/// `POST /api/vm-logs`, daemon (or the log forwarder) → API: one batch of a VM's log
/// lines, `{"log_group":"lablink-cloud-init","log_stream":"lablink-vm-001","messages":["..."]}`,
/// `log_stream` being the VM's hostname. `event_ids` and `timestamps` are ours and
/// optional: one per message, they make a retried batch idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_group: Option<String>,
    pub log_stream: String,
    pub messages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_ids: Option<Vec<String>>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<Vec<DateTime<Utc>>>,
}

/// `POST /api/vm-logs`, API → sender, 200:
/// `{"message":"VM logs posted successfully.","stored":3}` (lines new to the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsAccepted {
    pub message: String,
    pub stored: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{refused, round_trip};

    #[test]
    fn a_status_report_has_a_reason_only_when_given() {
        round_trip(
            r#"{"hostname":"vm-1","status":"running"}"#,
            &VmStatusReport {
                hostname: "vm-1".into(),
                status: "running".into(),
                reason: None,
                start_host: None,
                reset: None,
            },
        );
        round_trip(
            r#"{"hostname":"vm-1","status":"error","reason":"start-host failed: exit 1"}"#,
            &VmStatusReport {
                hostname: "vm-1".into(),
                status: "error".into(),
                reason: Some("start-host failed: exit 1".into()),
                start_host: None,
                reset: None,
            },
        );
        round_trip(
            r#"{"hostname":"vm-1","status":"error","reason":"start-host failed","start_host":{"ok":false,"exit_code":1,"output":"OAuth error"}}"#,
            &VmStatusReport {
                hostname: "vm-1".into(),
                status: "error".into(),
                reason: Some("start-host failed".into()),
                start_host: Some(StartHostOutcome {
                    ok: false,
                    exit_code: Some(1),
                    output: "OAuth error".into(),
                    assignment: None,
                }),
                reset: None,
            },
        );
        round_trip(
            r#"{"hostname":"vm-1","status":"running","start_host":{"ok":true,"exit_code":0,"output":"","assignment":"ab12"},"reset":7}"#,
            &VmStatusReport {
                hostname: "vm-1".into(),
                status: "running".into(),
                reason: None,
                start_host: Some(StartHostOutcome {
                    ok: true,
                    exit_code: Some(0),
                    output: String::new(),
                    assignment: Some("ab12".into()),
                }),
                reset: Some(7),
            },
        );
    }

    #[test]
    fn gpu_status_is_a_boolean_or_a_string() {
        let report = |gpu_status| GpuHealthReport {
            hostname: "vm-1".into(),
            gpu_status,
        };
        round_trip(
            r#"{"hostname":"vm-1","gpu_status":true}"#,
            &report(GpuStatus::Bool(true)),
        );
        round_trip(
            r#"{"hostname":"vm-1","gpu_status":false}"#,
            &report(GpuStatus::Bool(false)),
        );
        round_trip(
            r#"{"hostname":"vm-1","gpu_status":"N/A"}"#,
            &report(GpuStatus::not_available()),
        );
        round_trip(
            r#"{"hostname":"vm-1","gpu_status":"Healthy"}"#,
            &report(GpuStatus::Text("Healthy".into())),
        );
        refused::<GpuHealthReport>(
            r#"{"hostname":"vm-1","gpu_status":3}"#,
            r#"expected true, false or "N/A""#,
        );
        refused::<GpuHealthReport>(r#"{"hostname":"vm-1","gpu_status":null}"#, "expected true, false");
        refused::<GpuHealthReport>(r#"{"hostname":"vm-1"}"#, "missing field `gpu_status`");
    }

    #[test]
    fn in_use_is_a_boolean_status() {
        round_trip(
            r#"{"hostname":"vm-1","status":true}"#,
            &InUseReport {
                hostname: "vm-1".into(),
                status: true,
            },
        );
        refused::<InUseReport>(r#"{"hostname":"vm-1","status":"true"}"#, "invalid type");
    }

    #[test]
    fn timings_read_the_classic_payload_and_write_container_end() {
        let classic = r#"{"cloud_init_start":"2025-11-13T10:00:00Z","cloud_init_end":"2025-11-13T10:05:30Z",
            "docker_pull_start":"2025-11-13T10:01:00Z","docker_pull_end":"2025-11-13T10:03:00Z",
            "container_start":"2025-11-13T10:03:00Z","container_ready":"2025-11-13T10:05:30Z","other":1}"#;
        let t: RawTimings = serde_json::from_str(classic).unwrap();
        let s = |v: &str| Some(v.to_owned());
        let want = RawTimings {
            cloud_init_start: s("2025-11-13T10:00:00Z"),
            cloud_init_end: s("2025-11-13T10:05:30Z"),
            docker_pull_start: s("2025-11-13T10:01:00Z"),
            docker_pull_end: s("2025-11-13T10:03:00Z"),
            container_start: s("2025-11-13T10:03:00Z"),
            container_end: s("2025-11-13T10:05:30Z"),
            ..RawTimings::default()
        };
        assert_eq!(t, want);
        round_trip(
            r#"{"cloud_init_start":"2025-11-13T10:00:00Z","cloud_init_end":"2025-11-13T10:05:30Z",
                "docker_pull_start":"2025-11-13T10:01:00Z","docker_pull_end":"2025-11-13T10:03:00Z",
                "container_start":"2025-11-13T10:03:00Z","container_end":"2025-11-13T10:05:30Z"}"#,
            &want,
        );
        round_trip(
            r#"{"container_start":"2025-11-13T10:03:00.000Z","container_end":"2025-11-13T10:03:02.500Z"}"#,
            &RawTimings {
                container_start: s("2025-11-13T10:03:00.000Z"),
                container_end: s("2025-11-13T10:03:02.500Z"),
                ..RawTimings::default()
            },
        );
        round_trip(
            r#"{"tutorial_clone_start":"2025-11-13T10:03:01Z","tutorial_clone_end":"2025-11-13T10:03:04Z",
                "startup_script_start":"2025-11-13T10:03:04Z","startup_script_end":"2025-11-13T10:03:09Z"}"#,
            &RawTimings {
                tutorial_clone_start: s("2025-11-13T10:03:01Z"),
                tutorial_clone_end: s("2025-11-13T10:03:04Z"),
                startup_script_start: s("2025-11-13T10:03:04Z"),
                startup_script_end: s("2025-11-13T10:03:09Z"),
                ..RawTimings::default()
            },
        );
        round_trip("{}", &RawTimings::default());
        refused::<RawTimings>(r#"{"cloud_init_start":12}"#, "invalid type");
    }

    #[test]
    fn metrics_and_logs_answers_keep_their_counts() {
        round_trip(
            r#"{"message":"VM metrics posted successfully.","total_startup_seconds":330.5}"#,
            &MetricsAccepted {
                message: "VM metrics posted successfully.".into(),
                total_startup_seconds: 330.5,
            },
        );
        round_trip(
            r#"{"message":"VM logs posted successfully.","stored":3}"#,
            &LogsAccepted {
                message: "VM logs posted successfully.".into(),
                stored: 3,
            },
        );
    }

    #[test]
    fn a_log_batch_is_the_classic_shape_plus_optional_ids_and_times() {
        round_trip(
            r#"{"log_group":"lablink-cloud-init","log_stream":"vm-1","messages":["one","two"]}"#,
            &LogBatch {
                log_group: Some("lablink-cloud-init".into()),
                log_stream: "vm-1".into(),
                messages: vec!["one".into(), "two".into()],
                event_ids: None,
                timestamps: None,
            },
        );
        round_trip(
            r#"{"log_group":"g","log_stream":"vm-1","messages":["one"],"event_ids":["a:1:0"],
                "timestamps":["2025-11-13T10:00:00.250Z"]}"#,
            &LogBatch {
                log_group: Some("g".into()),
                log_stream: "vm-1".into(),
                messages: vec!["one".into()],
                event_ids: Some(vec!["a:1:0".into()]),
                timestamps: Some(vec!["2025-11-13T10:00:00.250Z".parse().unwrap()]),
            },
        );
        // Any RFC 3339 offset is read; nulls read as absent.
        let b: LogBatch = serde_json::from_str(
            r#"{"log_stream":"vm-1","messages":[],"event_ids":null,"timestamps":["2025-11-13T11:00:00+01:00"]}"#,
        )
        .unwrap();
        assert_eq!(b.log_group, None);
        assert_eq!(b.event_ids, None);
        assert_eq!(
            b.timestamps.unwrap()[0],
            "2025-11-13T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        refused::<LogBatch>(r#"{"log_stream":"vm-1"}"#, "missing field `messages`");
        refused::<LogBatch>(
            r#"{"log_stream":"vm-1","messages":["x"],"timestamps":["yesterday"]}"#,
            "input contains invalid characters",
        );
    }
}
