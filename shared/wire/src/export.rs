//! Data export: the task the holder hands a VM (`POST /vm_export`) and the VM's reports
//! on it to the API (`POST /api/vm-export/{hostname}`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::REDACTED;

/// `POST /vm_export`, holder → daemon, 200: the open export this VM must answer,
/// `{"job_id":"20261123T110000Z-0e0e0e01","upload_url":"https://...","extensions":["slp"],"max_file_bytes":1073741824,"deadline":"2026-11-23T12:00:00Z"}`.
/// (No export open by the end of the window: 204 without a body.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportTask {
    pub job_id: String,
    /// A presigned `PUT` URL for this VM's archive alone.
    pub upload_url: String,
    /// File extensions to collect, without the dot, compared case-insensitively.
    pub extensions: Vec<String>,
    /// Larger files are skipped and listed in the archive's manifest.
    pub max_file_bytes: u64,
    /// RFC 3339; a VM that has not answered by then is reported unreachable.
    pub deadline: DateTime<Utc>,
}

impl std::fmt::Debug for ExportTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The query of a presigned URL is its signature: a bearer capability.
        let url = match self.upload_url.split_once('?') {
            Some((base, _)) => format!("{base}?{REDACTED}"),
            None => self.upload_url.clone(),
        };
        f.debug_struct("ExportTask")
            .field("job_id", &self.job_id)
            .field("upload_url", &url)
            .field("extensions", &self.extensions)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// `POST /api/vm-export/{hostname}`, daemon → API: this VM's progress on export
/// `job_id`, one JSON object whose `"state"` tags the rest:
///
/// - `{"job_id":"...","state":"uploading"}`
/// - `{"job_id":"...","state":"done","files":2,"bytes":14,"skipped":1}`
/// - `{"job_id":"...","state":"no_files","skipped":0}`
/// - `{"job_id":"...","state":"failed","detail":"uploading the archive: ..."}`
///
/// Counts left out read as 0, a `failed` without `detail` as no reason given (as the API
/// always took them). An unknown `state`, a negative count, or a key the state does not
/// have (`files` on `uploading`, an unknown key anywhere) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ReportRepr", into = "ReportRepr")]
pub struct ExportReport {
    pub job_id: String,
    pub state: ExportState,
}

/// What an [`ExportReport`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportState {
    /// It started sending its archive.
    Uploading,
    /// Its archive is uploaded.
    Done { files: u64, bytes: u64, skipped: u64 },
    /// It has no matching file (its archive, with the manifest of skipped files, is
    /// uploaded all the same).
    NoFiles { skipped: u64 },
    /// It could not take part; the reason is shown to the admin.
    Failed { detail: Option<String> },
}

/// The JSON form: `job_id` sits next to the tag, so it is in every variant. Not
/// `#[serde(flatten)]`: that would silently turn off `deny_unknown_fields`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
enum ReportRepr {
    Uploading {
        job_id: String,
    },
    Done {
        job_id: String,
        #[serde(default)]
        files: u64,
        #[serde(default)]
        bytes: u64,
        #[serde(default)]
        skipped: u64,
    },
    NoFiles {
        job_id: String,
        #[serde(default)]
        skipped: u64,
    },
    Failed {
        job_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl From<ReportRepr> for ExportReport {
    fn from(r: ReportRepr) -> Self {
        let (job_id, state) = match r {
            ReportRepr::Uploading { job_id } => (job_id, ExportState::Uploading),
            ReportRepr::Done {
                job_id,
                files,
                bytes,
                skipped,
            } => (
                job_id,
                ExportState::Done {
                    files,
                    bytes,
                    skipped,
                },
            ),
            ReportRepr::NoFiles { job_id, skipped } => (job_id, ExportState::NoFiles { skipped }),
            ReportRepr::Failed { job_id, detail } => (job_id, ExportState::Failed { detail }),
        };
        Self { job_id, state }
    }
}

impl From<ExportReport> for ReportRepr {
    fn from(r: ExportReport) -> Self {
        let job_id = r.job_id;
        match r.state {
            ExportState::Uploading => Self::Uploading { job_id },
            ExportState::Done {
                files,
                bytes,
                skipped,
            } => Self::Done {
                job_id,
                files,
                bytes,
                skipped,
            },
            ExportState::NoFiles { skipped } => Self::NoFiles { job_id, skipped },
            ExportState::Failed { detail } => Self::Failed { job_id, detail },
        }
    }
}

/// The one value of [`ExportAccepted::status`]: `"ok"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    #[default]
    Ok,
}

/// `POST /api/vm-export/{hostname}`, API → daemon, 200: the report is recorded,
/// `{"status":"ok"}`. (404: the VM is not part of that export; 409: the export no longer
/// takes its report; both with an [`ErrorBody`](crate::ErrorBody).)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportAccepted {
    pub status: Ack,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{refused, round_trip};

    const JOB: &str = "20261123T110000Z-0e0e0e01";

    fn report(state: ExportState) -> ExportReport {
        ExportReport {
            job_id: JOB.into(),
            state,
        }
    }

    #[test]
    fn a_task_reads_and_writes_the_holders_keys() {
        round_trip(
            r#"{"job_id":"20261123T110000Z-0e0e0e01","upload_url":"https://b.s3.amazonaws.com/exports/x/vms/vm-1.tar?X-Amz-Signature=abc",
                "extensions":["slp","h5"],"max_file_bytes":1073741824,"deadline":"2026-11-23T12:00:00Z"}"#,
            &ExportTask {
                job_id: JOB.into(),
                upload_url: "https://b.s3.amazonaws.com/exports/x/vms/vm-1.tar?X-Amz-Signature=abc".into(),
                extensions: vec!["slp".into(), "h5".into()],
                max_file_bytes: 1 << 30,
                deadline: "2026-11-23T12:00:00Z".parse().unwrap(),
            },
        );
        refused::<ExportTask>(
            r#"{"job_id":"j","upload_url":"u","extensions":[],"max_file_bytes":-1,"deadline":"2026-11-23T12:00:00Z"}"#,
            "invalid value",
        );
    }

    #[test]
    fn a_task_never_shows_the_signature_of_its_url() {
        let t = ExportTask {
            job_id: JOB.into(),
            upload_url: "https://b/vm-1.tar?X-Amz-Signature=abc".into(),
            extensions: vec![],
            max_file_bytes: 1,
            deadline: "2026-11-23T12:00:00Z".parse().unwrap(),
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("abc") && shown.contains("https://b/vm-1.tar?"),
            "{shown}"
        );
    }

    #[test]
    fn every_report_round_trips_against_its_literal_json() {
        round_trip(
            r#"{"job_id":"20261123T110000Z-0e0e0e01","state":"uploading"}"#,
            &report(ExportState::Uploading),
        );
        round_trip(
            r#"{"job_id":"20261123T110000Z-0e0e0e01","state":"done","files":2,"bytes":14,"skipped":4}"#,
            &report(ExportState::Done {
                files: 2,
                bytes: 14,
                skipped: 4,
            }),
        );
        round_trip(
            r#"{"job_id":"20261123T110000Z-0e0e0e01","state":"no_files","skipped":1}"#,
            &report(ExportState::NoFiles { skipped: 1 }),
        );
        round_trip(
            r#"{"job_id":"20261123T110000Z-0e0e0e01","state":"failed","detail":"uploading the archive: 403"}"#,
            &report(ExportState::Failed {
                detail: Some("uploading the archive: 403".into()),
            }),
        );
        round_trip(
            r#"{"job_id":"20261123T110000Z-0e0e0e01","state":"failed"}"#,
            &report(ExportState::Failed { detail: None }),
        );
    }

    #[test]
    fn counts_left_out_read_as_zero_and_a_null_detail_as_none() {
        let r: ExportReport = serde_json::from_str(r#"{"job_id":"j","state":"done"}"#).unwrap();
        assert_eq!(
            r.state,
            ExportState::Done {
                files: 0,
                bytes: 0,
                skipped: 0
            }
        );
        let r: ExportReport = serde_json::from_str(r#"{"state":"no_files","job_id":"j"}"#).unwrap();
        assert_eq!(r.state, ExportState::NoFiles { skipped: 0 });
        let r: ExportReport =
            serde_json::from_str(r#"{"job_id":"j","state":"failed","detail":null}"#).unwrap();
        assert_eq!(r.state, ExportState::Failed { detail: None });
    }

    #[test]
    fn the_fixture_bodies_get_the_same_answers() {
        // events/vm-export/valid.json and invalid-state.json.
        let r: ExportReport =
            serde_json::from_str(r#"{"job_id": "20261123T110000Z-0e0e0e01", "state": "uploading"}"#).unwrap();
        assert_eq!(r, report(ExportState::Uploading));
        refused::<ExportReport>(
            r#"{"job_id": "20261123T110000Z-0e0e0e01", "state": "finished-maybe"}"#,
            "unknown variant `finished-maybe`, expected one of `uploading`, `done`, `no_files`, `failed`",
        );
    }

    #[test]
    fn unknown_states_keys_and_negative_counts_are_refused() {
        refused::<ExportReport>(r#"{"job_id":"j","state":"Done"}"#, "unknown variant");
        refused::<ExportReport>(r#"{"job_id":"j","state":"unreachable"}"#, "unknown variant");
        refused::<ExportReport>(r#"{"job_id":"j","state":null}"#, "invalid type");
        refused::<ExportReport>(r#"{"job_id":"j"}"#, "missing field `state`");
        refused::<ExportReport>(r#"{"state":"uploading"}"#, "missing field `job_id`");
        refused::<ExportReport>(
            r#"{"job_id":"j","state":"done","files":1,"extra":1}"#,
            "unknown field `extra`",
        );
        refused::<ExportReport>(
            r#"{"job_id":"j","state":"uploading","extra":1}"#,
            "unknown field `extra`",
        );
        // A key of another state is unknown to this one.
        refused::<ExportReport>(
            r#"{"job_id":"j","state":"uploading","files":1}"#,
            "unknown field `files`",
        );
        refused::<ExportReport>(
            r#"{"job_id":"j","state":"no_files","bytes":1}"#,
            "unknown field `bytes`",
        );
        refused::<ExportReport>(
            r#"{"job_id":"j","state":"done","detail":"x"}"#,
            "unknown field `detail`",
        );
        refused::<ExportReport>(
            r#"{"job_id":"j","state":"failed","skipped":0}"#,
            "unknown field `skipped`",
        );
        refused::<ExportReport>(r#"{"job_id":"j","state":"done","files":-1}"#, "invalid value");
        refused::<ExportReport>(r#"{"job_id":"j","state":"done","bytes":1.5}"#, "invalid type");
    }

    #[test]
    fn the_acknowledgement_is_status_ok() {
        round_trip(r#"{"status":"ok"}"#, &ExportAccepted::default());
        refused::<ExportAccepted>(r#"{"status":"success"}"#, "unknown variant");
    }
}
