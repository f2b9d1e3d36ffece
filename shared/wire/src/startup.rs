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
