//! Data export's side of Postgres: which VMs an export asks, the upload URL made for each,
//! and how far each got. The export job itself is in the job store; the holder keeps the
//! open export in memory ([`open_export`], one query) to answer the VMs' export
//! long-polls, reloading it when `NOTIFY vm_exports` says it changed ([`Notice`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::DbError;
use lablink_core::domain::{Hostname, JobId};
use lablink_wire::ExportTask;

/// The channel the holder listens on. Every change of an export's own state notifies it
/// (payload: the job id): [`start`], [`close`], [`finish`], and an older export failed by
/// [`start`]. So does a VM's final answer in [`report`] (payload:
/// `{"job_id":…,"hostname":…}`), so that a holder stops handing that VM the task
/// without reloading the whole export. See [`Notice`].
pub const CHANNEL: &str = "vm_exports";

/// What a `vm_exports` notification tells the holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An export opened or stopped collecting: load the open export again.
    Changed,
    /// `hostname` answered `job_id` for good (`done`, `no_files` or `failed`).
    Answered { job_id: String, hostname: Hostname },
}

impl Notice {
    /// Any payload that is not a VM's answer means "reload": the safe reading.
    pub fn parse(payload: &str) -> Self {
        #[derive(serde::Deserialize)]
        struct Answered {
            job_id: String,
            hostname: String,
        }
        serde_json::from_str::<Answered>(payload)
            .ok()
            .and_then(|a| {
                Some(Notice::Answered {
                    hostname: Hostname::parse(&a.hostname).ok()?,
                    job_id: a.job_id,
                })
            })
            .unwrap_or(Notice::Changed)
    }
}

/// What every VM of an export collects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSpec {
    /// File extensions without the dot, compared case-insensitively (`slp`).
    pub extensions: Vec<String>,
    /// Larger files are skipped and listed.
    pub max_file_bytes: i64,
    /// VMs that have not answered by then are reported unreachable.
    pub deadline: DateTime<Utc>,
}

/// A VM an export asks: every VM with a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub hostname: Hostname,
    pub email: Option<String>,
}

/// The assigned VMs (the ones with a participant's results), and the VMs an admin
/// released keeping the participant's files since the last finished export (their
/// daemons hold those files for it), by hostname.
pub async fn targets(client: &Client) -> Result<Vec<Target>, DbError> {
    let rows = client
        .query(
            "SELECT hostname, user_email FROM vms v
             WHERE user_email IS NOT NULL
                OR EXISTS (SELECT 1 FROM vm_actions a
                           WHERE a.hostname = v.hostname AND a.action = 'release' AND a.keep_files
                             AND a.at > COALESCE((SELECT max(e.created_at) FROM exports e WHERE e.state = 'done'),
                                                 '-infinity'))
             ORDER BY hostname",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            Ok(Target {
                hostname: Hostname::parse(&name)
                    .map_err(|e| DbError::Corrupt(format!("hostname {name}: {e}")))?,
                email: r.get(1),
            })
        })
        .collect()
}

/// Open export `job_id` for `vms` (hostname, email, that VM's upload URL) and wake the
/// holder's export waiters, in one statement. False when the export was opened before (a
/// retried job): nothing changes. Any other export still open (its job died and was
/// never retried) is failed first: the caller holds the fleet lock, so no other export
/// job can be alive.
pub async fn start(
    client: &Client,
    job_id: &JobId,
    spec: &ExportSpec,
    vms: &[(Target, String)],
) -> Result<bool, DbError> {
    client
        .query_one(
            "WITH f AS (
                 UPDATE exports SET state = 'failed'
                 WHERE state IN ('collecting', 'assembling') AND job_id <> $1
                 RETURNING job_id),
             n AS (SELECT pg_notify('vm_exports', job_id) FROM f)
             SELECT count(*) FROM n",
            &[&job_id.as_str()],
        )
        .await?;
    let hosts: Vec<&str> = vms.iter().map(|(t, _)| t.hostname.as_str()).collect();
    let emails: Vec<Option<&str>> = vms.iter().map(|(t, _)| t.email.as_deref()).collect();
    let urls: Vec<&str> = vms.iter().map(|(_, u)| u.as_str()).collect();
    let row = client
        .query_one(
            "WITH e AS (
                 INSERT INTO exports (job_id, state, extensions, max_file_bytes, deadline)
                 VALUES ($1, 'collecting', $2, $3, $4) ON CONFLICT (job_id) DO NOTHING
                 RETURNING job_id),
             v AS (
                 INSERT INTO export_vms (job_id, hostname, email, state, upload_url)
                 SELECT e.job_id, t.h, t.em, 'waiting', t.u
                 FROM e, unnest($5::text[], $6::text[], $7::text[]) AS t(h, em, u)
                 RETURNING 1),
             n AS (SELECT pg_notify('vm_exports', job_id) FROM e)
             SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM v), (SELECT count(*) FROM n)",
            &[
                &job_id.as_str(),
                &spec.extensions,
                &spec.max_file_bytes,
                &spec.deadline,
                &hosts,
                &emails,
                &urls,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// The collecting export as the holder keeps it in memory: the job's fields and the
/// upload URL of every VM that has not answered for good (`waiting` or `uploading`).
#[derive(Clone, PartialEq, Eq)]
pub struct OpenExport {
    pub job_id: String,
    pub extensions: Vec<String>,
    pub max_file_bytes: u64,
    pub deadline: DateTime<Utc>,
    /// Hostname → that VM's upload URL.
    pub upload_urls: HashMap<Hostname, String>,
}

impl OpenExport {
    /// `host`'s task, if this export asks it and its deadline is after `now`: the same
    /// answer as [`task_for`], from memory.
    pub fn task_for(&self, host: &Hostname, now: DateTime<Utc>) -> Option<ExportTask> {
        if self.deadline <= now {
            return None;
        }
        let url = self.upload_urls.get(host)?;
        Some(ExportTask {
            job_id: self.job_id.clone(),
            upload_url: url.clone(),
            extensions: self.extensions.clone(),
            max_file_bytes: self.max_file_bytes,
            deadline: self.deadline,
        })
    }
}

impl std::fmt::Debug for OpenExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs are bearer capabilities (their query is the signature): counted only.
        f.debug_struct("OpenExport")
            .field("job_id", &self.job_id)
            .field("extensions", &self.extensions)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("deadline", &self.deadline)
            .field("vms", &self.upload_urls.len())
            .finish()
    }
}

/// The collecting export (at most one: a partial unique index) with every VM that still
/// has to answer, in ONE query, whatever the number of VMs; `None` when no export is
/// collecting. The deadline is not checked here: [`OpenExport::task_for`] checks it.
pub async fn open_export(client: &Client) -> Result<Option<OpenExport>, DbError> {
    let row = client
        .query_opt(
            "SELECT e.job_id, e.extensions, e.max_file_bytes, e.deadline,
                    coalesce(array_agg(v.hostname ORDER BY v.hostname)
                             FILTER (WHERE v.hostname IS NOT NULL), '{}'),
                    coalesce(array_agg(v.upload_url ORDER BY v.hostname)
                             FILTER (WHERE v.hostname IS NOT NULL), '{}')
             FROM exports e
             LEFT JOIN export_vms v ON v.job_id = e.job_id AND v.state IN ('waiting', 'uploading')
             WHERE e.state = 'collecting'
             GROUP BY e.job_id",
            &[],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let max: i64 = r.get(2);
    let hosts: Vec<String> = r.get(4);
    let urls: Vec<String> = r.get(5);
    let upload_urls = hosts
        .into_iter()
        .zip(urls)
        .map(|(h, u)| {
            Hostname::parse(&h)
                .map(|h| (h, u))
                .map_err(|e| DbError::Corrupt(format!("export_vms.hostname {h}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(OpenExport {
        job_id: r.get(0),
        extensions: r.get(1),
        // `CHECK (max_file_bytes > 0)`: a negative is a corrupt row.
        max_file_bytes: u64::try_from(max)
            .map_err(|_| DbError::Corrupt(format!("exports.max_file_bytes is {max}")))?,
        deadline: r.get(3),
        upload_urls,
    }))
}

/// The open export `host` still has to answer, if any: what the holder hands the VM, as
/// the message itself (the daemon reads the same type). The holder itself answers from
/// [`open_export`]; this per-VM form is for tests and tools.
pub async fn task_for(client: &Client, host: &Hostname) -> Result<Option<ExportTask>, DbError> {
    let row = client
        .query_opt(
            "SELECT e.job_id, v.upload_url, e.extensions, e.max_file_bytes, e.deadline
             FROM exports e JOIN export_vms v ON v.job_id = e.job_id
             WHERE e.state = 'collecting' AND e.deadline > now()
               AND v.hostname = $1 AND v.state IN ('waiting', 'uploading')",
            &[&host.as_str()],
        )
        .await?;
    row.map(|r| {
        // `CHECK (max_file_bytes > 0)`: a negative is a corrupt row.
        let max: i64 = r.get(3);
        Ok(ExportTask {
            job_id: r.get(0),
            upload_url: r.get(1),
            extensions: r.get(2),
            max_file_bytes: u64::try_from(max)
                .map_err(|_| DbError::Corrupt(format!("exports.max_file_bytes is {max}")))?,
            deadline: r.get(4),
        })
    })
    .transpose()
}

/// A VM's report on its part of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// It started sending its archive.
    Uploading,
    /// Its archive is uploaded.
    Done { files: i64, bytes: i64, skipped: i64 },
    /// It has no matching file (its archive, with the manifest of skipped files, is
    /// uploaded all the same).
    NoFiles { skipped: i64 },
    /// It could not take part (its reason, shown to the admin).
    Failed { detail: String },
}

/// Why a report was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The VM is not part of this export.
    NotFound,
    /// The export is no longer collecting, or the VM's answer is already final.
    Closed,
}

/// Record `host`'s report for `job_id` while the export collects and the VM's answer is
/// not final. One statement; a final answer also notifies [`CHANNEL`] with the VM and
/// the job, so the holders stop handing it this task (a daemon that is handed a task it
/// answered re-sends its report, is refused, and polls again at once: a loop until the
/// export closes).
pub async fn report(
    client: &Client,
    job_id: &JobId,
    host: &Hostname,
    report: &Report,
) -> Result<Result<(), Refused>, DbError> {
    let (state, files, bytes, skipped, detail) = match report {
        Report::Uploading => ("uploading", 0, 0, 0, None),
        Report::Done {
            files,
            bytes,
            skipped,
        } => ("done", *files, *bytes, *skipped, None),
        Report::NoFiles { skipped } => ("no_files", 0, 0, *skipped, None),
        Report::Failed { detail } => ("failed", 0, 0, 0, Some(detail.as_str())),
    };
    let n: i64 = client
        .query_one(
            "WITH u AS (
                 UPDATE export_vms v SET state = $3, files = $4, bytes = $5, skipped = $6, detail = $7, updated_at = now()
                 FROM exports e
                 WHERE e.job_id = v.job_id AND e.state = 'collecting'
                   AND v.job_id = $1 AND v.hostname = $2 AND v.state IN ('waiting', 'uploading')
                 RETURNING v.job_id, v.hostname, v.state),
             n AS (
                 SELECT pg_notify('vm_exports', json_build_object('job_id', job_id, 'hostname', hostname)::text)
                 FROM u WHERE state <> 'uploading')
             SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
            &[&job_id.as_str(), &host.as_str(), &state, &files, &bytes, &skipped, &detail],
        )
        .await?
        .get(0);
    if n == 1 {
        return Ok(Ok(()));
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM export_vms WHERE job_id = $1 AND hostname = $2",
            &[&job_id.as_str(), &host.as_str()],
        )
        .await?
        .is_some();
    Ok(Err(if exists {
        Refused::Closed
    } else {
        Refused::NotFound
    }))
}

/// One VM's part of an export, as the job page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmProgress {
    pub hostname: String,
    pub email: Option<String>,
    pub state: String,
    pub files: i64,
    pub bytes: i64,
    pub skipped: i64,
    pub detail: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Every VM of `job_id`, by hostname.
pub async fn progress(client: &Client, job_id: &JobId) -> Result<Vec<VmProgress>, DbError> {
    let rows = client
        .query(
            "SELECT hostname, email, state, files, bytes, skipped, detail, updated_at
             FROM export_vms WHERE job_id = $1 ORDER BY hostname",
            &[&job_id.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| VmProgress {
            hostname: r.get(0),
            email: r.get(1),
            state: r.get(2),
            files: r.get(3),
            bytes: r.get(4),
            skipped: r.get(5),
            detail: r.get(6),
            updated_at: r.get(7),
        })
        .collect())
}

/// The export's own state and deadline, if it was opened.
pub async fn state(client: &Client, job_id: &JobId) -> Result<Option<(String, DateTime<Utc>)>, DbError> {
    let row = client
        .query_opt(
            "SELECT state, deadline FROM exports WHERE job_id = $1",
            &[&job_id.as_str()],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// How many VMs of `job_id` have not answered finally yet.
pub async fn outstanding(client: &Client, job_id: &JobId) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM export_vms WHERE job_id = $1 AND state IN ('waiting', 'uploading')",
            &[&job_id.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

/// Stop collecting: late reports are refused from now on, and VMs that have not answered
/// are unreachable (in that order, so no report slips in between). Returns how many VMs
/// were marked unreachable.
pub async fn close(client: &Client, job_id: &JobId) -> Result<u64, DbError> {
    client
        .query_one(
            "WITH c AS (
                 UPDATE exports SET state = 'assembling' WHERE job_id = $1 AND state = 'collecting'
                 RETURNING job_id),
             n AS (SELECT pg_notify('vm_exports', job_id) FROM c)
             SELECT count(*) FROM n",
            &[&job_id.as_str()],
        )
        .await?;
    Ok(client
        .execute(
            "UPDATE export_vms SET state = 'unreachable', updated_at = now(),
                 detail = CASE state WHEN 'uploading' THEN 'its upload did not finish by the deadline'
                                     ELSE 'no answer by the deadline (daemon stopped or VM off?)' END
             WHERE job_id = $1 AND state IN ('waiting', 'uploading')",
            &[&job_id.as_str()],
        )
        .await?)
}

/// The export ended (`done` or `failed`). Notifies too: normally it left `collecting`
/// at [`close`], but a holder must never keep handing out an export that ended.
pub async fn finish(client: &Client, job_id: &JobId, ok: bool) -> Result<(), DbError> {
    client
        .query_one(
            "WITH f AS (UPDATE exports SET state = $2 WHERE job_id = $1 RETURNING job_id),
             n AS (SELECT pg_notify('vm_exports', job_id) FROM f)
             SELECT count(*) FROM n",
            &[&job_id.as_str(), &if ok { "done" } else { "failed" }],
        )
        .await?;
    Ok(())
}
