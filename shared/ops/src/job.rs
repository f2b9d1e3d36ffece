//! The job record: what the admin asked for, where it is, and what happened. The same
//! JSON is stored by every [`JobStore`](crate::JobStore) and served by `GET /api/jobs/{id}`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use lablink_core::domain::JobId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    Launch {
        num_vms: u32,
    },
    Destroy,
    /// Collect the participants' result files from every assigned VM into one zip.
    Export,
    /// Terminate one VM's instance and launch one in its place (an admin's per-VM
    /// action; the new VM gets a new hostname and joins the pool when it is running).
    Replace {
        hostname: String,
    },
}

impl JobKind {
    /// The stored `kind` tag: `launch`, `destroy`, `export`, `replace`.
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Launch { .. } => "launch",
            JobKind::Destroy => "destroy",
            JobKind::Export => "export",
            JobKind::Replace { .. } => "replace",
        }
    }

    pub fn label(&self) -> String {
        match self {
            JobKind::Launch { num_vms } => {
                format!("launch {num_vms} VM{}", if *num_vms == 1 { "" } else { "s" })
            }
            JobKind::Destroy => "destroy the fleet".into(),
            JobKind::Export => "export the participants' data".into(),
            JobKind::Replace { hostname } => format!("replace VM {hostname}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// One line of a job's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub at: DateTime<Utc>,
    pub message: String,
}

/// One VM a job touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobVm {
    pub hostname: String,
    pub instance_id: String,
}

/// An export's download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOutcome {
    /// `lablink_data<timestamp>.zip`.
    pub file: String,
    pub files: u64,
    /// The files' bytes, and the zip's.
    pub bytes: u64,
    pub zip_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    #[serde(flatten)]
    pub kind: JobKind,
    pub state: JobState,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// While running: until when the current attempt owns the job. A later delivery of
    /// the same stream record takes over only after this passes (the first attempt died).
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub attempts: u32,
    /// Launch: the hostnames chosen for this job (kept, so a retry reuses them).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// The VMs launched or terminated.
    #[serde(default)]
    pub vms: Vec<JobVm>,
    #[serde(default)]
    pub events: Vec<JobEvent>,
    /// Failed: the reason, with the provider's error text.
    #[serde(default)]
    pub error: Option<String>,
    /// Export: the zip, once assembled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportOutcome>,
    /// Launch: what the admin chose for this launch instead of the deployment's defaults
    /// (instance type, client image, tutorial repository).
    #[serde(
        default,
        skip_serializing_if = "lablink_core::vm_settings::LaunchOverrides::is_empty"
    )]
    pub overrides: lablink_core::vm_settings::LaunchOverrides,
    /// Launch: the AMI the VMs were started from (resolved from the SSM parameter when
    /// the deployment names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Optimistic concurrency: every stored change increments it.
    #[serde(default)]
    pub version: u64,
}

impl Job {
    pub fn new(id: JobId, kind: JobKind, requested_by: &str, now: DateTime<Utc>) -> Self {
        let label = kind.label();
        Self {
            id,
            kind,
            state: JobState::Queued,
            requested_by: requested_by.to_owned(),
            created_at: now,
            updated_at: now,
            lease_until: None,
            attempts: 0,
            hostnames: Vec::new(),
            vms: Vec::new(),
            events: vec![JobEvent {
                at: now,
                message: format!("queued: {label}"),
            }],
            error: None,
            export: None,
            overrides: Default::default(),
            image_id: None,
            version: 0,
        }
    }

    pub fn event(&mut self, now: DateTime<Utc>, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(job = %self.id, "{message}");
        self.events.push(JobEvent { at: now, message });
        // A job's record stays well inside DynamoDB's 400 KB item limit.
        if self.events.len() > 200 {
            self.events.drain(1..self.events.len() - 199);
        }
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_as_json() {
        let mut j = Job::new(
            JobId::generate(Utc::now()),
            JobKind::Launch { num_vms: 3 },
            "admin",
            Utc::now(),
        );
        j.event(Utc::now(), "hello");
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["kind"], "launch");
        assert_eq!(v["kind"], j.kind.name(), "name() is the stored tag");
        assert_eq!(v["num_vms"], 3);
        assert_eq!(v["state"], "queued");
        let back: Job = serde_json::from_value(v).unwrap();
        assert_eq!(back, j);
    }
}
