//! Enrollment, daemon → API (`POST /api/enroll`): a launched VM's first call.

use serde::{Deserialize, Serialize};

use crate::REDACTED;

/// `POST /api/enroll`, daemon → API:
/// `{"instance_id":"i-0123456789abcdef0","enrollment_secret":"..."}` (the secret its
/// launch job put in the user-data).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub instance_id: String,
    pub enrollment_secret: String,
    /// The VM's bootstrap failed before its daemon could run (no AWS CLI, the daemon's
    /// download or checksum, the unit's start): why, for the admin. No credential is
    /// issued; the VM's row turns `error` with "bootstrap failed: <this>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_failure: Option<String>,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("instance_id", &self.instance_id)
            .field("enrollment_secret", &REDACTED)
            .finish()
    }
}

/// `POST /api/enroll`, API → daemon, 200: `{"hostname":"lablink-vm-001","credential":"..."}`.
/// The credential is handed out this once (only its hash is kept). Refusals (404 not
/// recorded yet, 403 wrong secret, 409 enrolled before) carry an
/// [`ErrorBody`](crate::ErrorBody).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub hostname: String,
    pub credential: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("hostname", &self.hostname)
            .field("credential", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{refused, round_trip};

    #[test]
    fn enrollment_reads_and_writes_the_classic_keys() {
        round_trip(
            r#"{"instance_id":"i-0123456789abcdef0","enrollment_secret":"s3cret"}"#,
            &EnrollRequest {
                bootstrap_failure: None,
                instance_id: "i-0123456789abcdef0".into(),
                enrollment_secret: "s3cret".into(),
            },
        );
        round_trip(
            r#"{"hostname":"lablink-vm-001","credential":"c0ffee"}"#,
            &Enrollment {
                hostname: "lablink-vm-001".into(),
                credential: "c0ffee".into(),
            },
        );
        refused::<Enrollment>(r#"{"credential":"c0ffee"}"#, "missing field `hostname`");
        refused::<Enrollment>(r#"{"hostname":"lablink-vm-001"}"#, "missing field `credential`");
    }

    #[test]
    fn secrets_are_not_shown() {
        let r = EnrollRequest {
            bootstrap_failure: None,
            instance_id: "i-1".into(),
            enrollment_secret: "s3cret".into(),
        };
        let e = Enrollment {
            hostname: "vm-1".into(),
            credential: "c0ffee".into(),
        };
        let shown = format!("{r:?} {e:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("c0ffee"), "{shown}");
    }
}
