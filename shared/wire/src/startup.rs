//! The assignment long-poll, daemon ↔ holder (`POST /vm_startup`), and the holder's
//! `GET /healthz`.

use serde::{Deserialize, Serialize};

use crate::REDACTED;

/// The body of both holder long-polls, daemon → holder: `POST /vm_startup` and
/// `POST /vm_export` (`?wait=<seconds>` in the query, the credential as a bearer token):
/// `{"hostname": "lablink-vm-001"}`. Unknown keys are ignored, as classic clients expect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPoll {
    pub hostname: String,
}

/// The one value of [`Assignment::status`]: `"success"`. A classic client treats a 200
/// whose `status` is anything else as a final rejection, so no other value exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Success {
    #[default]
    Success,
}

/// `POST /vm_startup`, holder → daemon, 200: this VM's assignment,
/// `{"status":"success","pin":"123456","command":"DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=... --redirect-url=... --name=$HOSTNAME","hostname":"lablink-vm-001"}`.
/// (No assignment yet: 204 without a body. A refusal: [`ErrorBody`](crate::ErrorBody).)
///
/// `hostname` is ours: the holder always sends it, a classic server does not, and the
/// daemon does not need it. Unknown keys are ignored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub status: Success,
    /// The participant's six-digit PIN.
    pub pin: String,
    /// The normalized CRD `start-host` command, with its one-time code.
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl Assignment {
    /// The holder's answer for `hostname`.
    pub fn new(hostname: impl Into<String>, pin: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            status: Success::Success,
            pin: pin.into(),
            command: command.into(),
            hostname: Some(hostname.into()),
        }
    }
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("status", &self.status)
            .field("pin", &REDACTED)
            .field("command", &REDACTED)
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// The one value of [`ResetOrder::status`]: `"reset"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetTag {
    #[default]
    Reset,
}

/// `POST /vm_startup`, holder → daemon, 200, to credentialed daemons only (a classic
/// client would read any 200 that is not a success as final): the admin released this
/// VM's seat, `{"status":"reset","reset":7,"keep_files":false}`. The daemon removes the
/// Chrome Remote Desktop registration and starts a new workspace from the image (the
/// participant's files are kept aside for the next data export when `keep_files`), then
/// reports `running` with `"reset": 7`, and the VM rejoins the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetOrder {
    pub status: ResetTag,
    pub reset: u64,
    #[serde(default)]
    pub keep_files: bool,
}

impl ResetOrder {
    pub fn new(reset: u64, keep_files: bool) -> Self {
        Self {
            status: ResetTag::Reset,
            reset,
            keep_files,
        }
    }
}

/// Either answer of a 200 from `POST /vm_startup` (what the daemon reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StartupAnswer {
    Assignment(Assignment),
    Reset(ResetOrder),
}

/// The name of one assignment (hex SHA-256 of the hostname, the PIN and the command,
/// each length-prefixed): the daemon remembers what it ran under it, and names it in
/// [`StartHostOutcome`](crate::StartHostOutcome) so the server acknowledges that
/// assignment and no other. The database computes the same value in SQL
/// (`lablink_db::vms`), which a test holds to this one.
pub fn assignment_key(hostname: &str, pin: &str, command: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [hostname, pin, command] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Whether the holder's one Postgres connection is up and listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerState {
    Listening,
    Reconnecting,
}

/// `GET /healthz`, holder → load balancer and operators (200 when listening, else 503):
/// `{"listener":"listening","waiters":12,"export_waiters":12,"connections":1,"queries":40}`.
/// `waiters` wait on `/vm_startup`, `export_waiters` on `/vm_export`; `connections`
/// counts the (re)connections of the listening connection since start, `queries` the
/// statements the holder sent on it (heartbeats included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderHealth {
    pub listener: ListenerState,
    pub waiters: u64,
    pub export_waiters: u64,
    pub connections: u64,
    pub queries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{refused, round_trip};

    #[test]
    fn the_poll_body_is_the_hostname_and_ignores_extra_keys() {
        let want = VmPoll {
            hostname: "lablink-vm-001".into(),
        };
        round_trip(r#"{"hostname":"lablink-vm-001"}"#, &want);
        let extra: VmPoll = serde_json::from_str(r#"{"hostname":"lablink-vm-001","v":2}"#).unwrap();
        assert_eq!(extra, want);
        refused::<VmPoll>(r#"{"host":"lablink-vm-001"}"#, "missing field `hostname`");
    }

    #[test]
    fn an_assignment_reads_and_writes_the_classic_keys() {
        round_trip(
            r#"{"status":"success","pin":"123456","command":"DISPLAY= start-host --code=4/x","hostname":"vm-1"}"#,
            &Assignment::new("vm-1", "123456", "DISPLAY= start-host --code=4/x"),
        );
        // A classic server sends no hostname.
        round_trip(
            r#"{"status":"success","pin":"123456","command":"c"}"#,
            &Assignment {
                status: Success::Success,
                pin: "123456".into(),
                command: "c".into(),
                hostname: None,
            },
        );
    }

    #[test]
    fn a_200_without_status_success_is_not_an_assignment() {
        refused::<Assignment>(
            r#"{"status":"failed","pin":"1","command":"c"}"#,
            "unknown variant",
        );
        refused::<Assignment>(r#"{"pin":"1","command":"c"}"#, "missing field `status`");
        refused::<Assignment>(r#"{"status":"success","command":"c"}"#, "missing field `pin`");
        refused::<Assignment>(r#"{"status":"success","pin":"1"}"#, "missing field `command`");
        refused::<Assignment>(r#"{"status":"success","pin":1,"command":"c"}"#, "invalid type");
    }

    #[test]
    fn an_assignment_never_shows_its_pin_or_command() {
        let shown = format!(
            "{:?}",
            Assignment::new("vm-1", "123456", "start-host --code=4/secret")
        );
        assert!(!shown.contains("123456") && !shown.contains("secret"), "{shown}");
        assert!(shown.contains("vm-1"), "{shown}");
    }

    #[test]
    fn a_reset_order_is_told_apart_from_an_assignment() {
        round_trip(
            r#"{"status":"reset","reset":7,"keep_files":true}"#,
            &ResetOrder::new(7, true),
        );
        let a: StartupAnswer = serde_json::from_str(r#"{"status":"reset","reset":3}"#).unwrap();
        assert_eq!(a, StartupAnswer::Reset(ResetOrder::new(3, false)));
        let a: StartupAnswer =
            serde_json::from_str(r#"{"status":"success","pin":"123456","command":"c"}"#).unwrap();
        assert!(matches!(a, StartupAnswer::Assignment(x) if x.pin == "123456"));
        refused::<StartupAnswer>(r#"{"status":"failed","pin":"1","command":"c"}"#, "did not match");
        // Fields are separated: moving characters between them changes the key.
        assert_ne!(
            assignment_key("vm-1", "12", "3456cmd"),
            assignment_key("vm-1", "123456", "cmd")
        );
        assert_eq!(assignment_key("vm-1", "123456", "cmd").len(), 64);
    }

    #[test]
    fn holder_health_is_five_keys() {
        round_trip(
            r#"{"listener":"reconnecting","waiters":0,"export_waiters":0,"connections":3,"queries":7}"#,
            &HolderHealth {
                listener: ListenerState::Reconnecting,
                waiters: 0,
                export_waiters: 0,
                connections: 3,
                queries: 7,
            },
        );
        round_trip(
            r#"{"listener":"listening","waiters":12,"export_waiters":11,"connections":1,"queries":40}"#,
            &HolderHealth {
                listener: ListenerState::Listening,
                waiters: 12,
                export_waiters: 11,
                connections: 1,
                queries: 40,
            },
        );
    }
}
