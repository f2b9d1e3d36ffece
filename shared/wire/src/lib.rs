//! The JSON messages between LabLink's own processes: the client daemon on each VM, the
//! holder (`POST /vm_startup`, `POST /vm_export`) and the API (`/api/...`). Both ends of
//! a message use the type here, so neither builds nor reads the other's JSON by hand.
//!
//! Owns: the shape of every body (its keys, their JSON types, the tags), exactly as
//! classic clients send and read them. The keys are wire contracts with VMs already in
//! the field: never rename one; add new ones as optional.
//!
//! Must not: know about HTTP, Lambda, Postgres or AWS (no status codes, no clients, no
//! queries), depend on another LabLink crate, or validate domain rules. A hostname, a
//! PIN, a status name or a job id is a plain string here; the receiving end parses it
//! into its `lablink-core` domain type (parse, don't validate, happens there).
//!
//! Secrets (PINs, CRD commands, credentials, enrollment secrets, presigned URLs) are
//! left out of every `Debug` form, so logging a message never logs one.

mod enroll;
mod export;
mod report;
mod startup;

pub use enroll::{EnrollRequest, Enrollment};
pub use export::{Ack, ExportAccepted, ExportReport, ExportState, ExportTask};
pub use report::{
    GpuHealthReport, GpuStatus, InUseReport, LogBatch, LogsAccepted, MetricsAccepted, RawTimings,
    StartHostOutcome, VmStatusReport,
};
pub use startup::{
    Assignment, HolderHealth, ListenerState, ResetOrder, ResetTag, StartupAnswer, Success, VmPoll,
    assignment_key,
};

use serde::{Deserialize, Serialize};

/// The usual answer to a VM's report (`POST /api/vm-status`, `/api/gpu_health`,
/// `/api/update_inuse_status`), API → daemon: `{"message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

impl Message {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Every refusal, by the API and by the holder, whatever the route: `{"error": "..."}`
/// with a 4xx or 5xx status (a 204 from the holder has no body at all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self { error: error.into() }
    }
}

/// What a `Debug` form shows instead of a secret.
const REDACTED: &str = "<redacted>";

#[cfg(test)]
pub(crate) mod testing {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// `json` (a literal classic body) reads as `want`, and `want` writes back the same
    /// JSON (compared as values: key order is not part of the contract).
    pub fn round_trip<T>(json: &str, want: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let got: T = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(&got, want, "{json}");
        let written = serde_json::to_value(want).unwrap();
        let literal: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(written, literal, "{json}");
    }

    /// `json` is refused, and the reason mentions `why`.
    pub fn refused<T: DeserializeOwned + std::fmt::Debug>(json: &str, why: &str) {
        match serde_json::from_str::<T>(json) {
            Ok(v) => panic!("{json} was accepted as {v:?}"),
            Err(e) => assert!(e.to_string().contains(why), "{json}: {e} (wanted {why:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::round_trip;
    use super::*;

    #[test]
    fn the_generic_bodies_are_one_key_each() {
        round_trip(
            r#"{"message":"VM status updated successfully."}"#,
            &Message::new("VM status updated successfully."),
        );
        round_trip(
            r#"{"error":"unknown VM vm-9"}"#,
            &ErrorBody::new("unknown VM vm-9"),
        );
    }
}
