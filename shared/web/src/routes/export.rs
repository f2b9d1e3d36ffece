//! Data export: the admin starts it (`GET /api/scp-client`, the classic path), each VM
//! reports its progress (`POST /api/vm-export/{hostname}`, Postgres only), and the admin
//! downloads the zip (`GET /api/exports/{id}/download`, feature `export`: S3 or the local
//! runner's folder).

#[cfg(feature = "jobs")]
use chrono::Utc;
use lablink_core::domain::JobId;
use lablink_db::exports;
#[cfg(feature = "jobs")]
use lablink_ops::{Job, JobKind, Submitted};
use lablink_wire as wire;
use lambda_http::Request;
use lambda_http::http::StatusCode;
#[cfg(feature = "export")]
use lambda_http::http::header;
#[cfg(feature = "export")]
use lambda_http::{Body, Response};

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::auth;
#[cfg(feature = "jobs")]
use crate::request::wants_html;
use crate::request::{self, SMALL_BODY};
use crate::respond::json;
#[cfg(feature = "jobs")]
use crate::respond::redirect;
use crate::{ApiError, AppState};

#[cfg(feature = "jobs")]
pub const SCP_CLIENT: Route = Route {
    function: "scp-client",
    verb: Verb::Get,
    path: "/api/scp-client",
    access: Access::Admin,
    features: &["admin", "jobs"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::PageOrJson {
        back: "/admin",
        label: "Back to the dashboard",
    },
    handler: handler!(scp_client),
};

/// `GET /api/scp-client` (the classic path; the "Export data" button is a GET form to
/// it): start an export job, or lead to the one running. A browser is sent to the job's
/// page; a script gets the job as JSON (202 new, 200 already running), then polls
/// `GET /api/jobs/{id}`. A GET that starts work is guarded: the session cookie is
/// SameSite=Strict, a browser request whose `Sec-Fetch-Site` is not `same-origin` (or
/// `none`: typed in) is refused, and exports run one at a time.
#[cfg(feature = "jobs")]
async fn scp_client(state: &AppState, req: &Request) -> Reply {
    let admin = auth::require_admin(state, req).await?;
    // Browsers say where a request comes from: only this site's own pages (or the
    // address bar) may start an export. SameSite=Strict alone would let a sibling
    // subdomain (or any localhost page, locally) through.
    let foreign = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"));
    if foreign {
        return Err(ApiError::Refused(
            "an export can only be started from this site's admin pages".into(),
        ));
    }
    let store = state.jobs().await?;
    // A double click sends two requests: the second finds the first's export holding
    // the fleet lock (for a moment without its record: look again) and joins it.
    for _ in 0..20 {
        let job = Job::new(
            JobId::generate(Utc::now()),
            JobKind::Export,
            &admin.user,
            Utc::now(),
        );
        let (job, status) = match lablink_ops::submit(store.as_ref(), job, Utc::now()).await? {
            Submitted::Created(j) => (j, StatusCode::ACCEPTED),
            Submitted::Existing(j) => (j, StatusCode::OK),
            Submitted::Busy(Some(h)) if h.kind == JobKind::Export => (h, StatusCode::OK),
            Submitted::Busy(Some(h)) => {
                return Err(ApiError::Conflict(format!(
                    "Another job is running: {} (job {}, {}). Export when it has finished.",
                    h.kind.label(),
                    h.id,
                    h.state.as_str()
                )));
            }
            Submitted::Busy(None) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if wants_html(req) || admin.session.is_some() {
            return Ok(redirect(&format!("/admin/jobs/{}", job.id)));
        }
        return Ok(json(status, &super::admin_jobs::job_json(&job)));
    }
    Err(ApiError::Conflict(
        "Another job holds the fleet; try again in a moment.".into(),
    ))
}

#[cfg(feature = "export")]
pub const EXPORT_DOWNLOAD: Route = Route {
    function: "export-download",
    verb: Verb::Get,
    path: "/api/exports/{id}/download",
    access: Access::Admin,
    features: &["admin", "jobs", "export"],
    reaches: Reaches {
        db: true,
        jobs_table: true,
        export_bucket: Some("read"),
    },
    on_error: OnError::Json,
    handler: handler!(export_download),
};

/// `GET /api/exports/{id}/download`: the export's zip, for an admin: a redirect to a
/// presigned link valid for 5 minutes (S3), or the file itself (local runner).
#[cfg(feature = "export")]
async fn export_download(state: &AppState, req: &Request) -> Reply {
    let path = req.uri().path();
    let raw = request::path_param_named(req, "id")
        .or_else(|| {
            path.strip_prefix("/api/exports/")
                .and_then(|p| p.strip_suffix("/download"))
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::bad_request("the path has no job id"))?;
    let id = JobId::parse(&raw).map_err(ApiError::bad_request)?;
    auth::require_admin(state, req).await?;
    let job = state
        .jobs()
        .await?
        .get(&id)
        .await?
        .filter(|j| j.kind == JobKind::Export)
        .ok_or_else(|| ApiError::NotFound(format!("no export {id}")))?;
    let Some(outcome) = job.export.as_ref().filter(|o| is_export_name(&o.file)) else {
        return Err(ApiError::Conflict(format!(
            "export {id} has no download (it is {})",
            job.state.as_str()
        )));
    };
    let storage = state.exports().await?;
    match storage
        .download(id.as_str(), &outcome.file, std::time::Duration::from_secs(300))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        lablink_export::Download::Redirect(url) => Ok(redirect(&url)),
        lablink_export::Download::File(path) => Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/zip")
            .header(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", outcome.file),
            )
            .header(header::CACHE_CONTROL, "no-store")
            // The local runner streams the file named here (a Lambda never gets here).
            .header(crate::local_file::HEADER, path.to_string_lossy().as_ref())
            .body(Body::Empty)
            .expect("static headers are valid")),
        lablink_export::Download::Missing => Err(ApiError::NotFound(format!(
            "the zip of export {id} is gone (exports expire)"
        ))),
    }
}

/// `lablink_data<14 digits>.zip`: what the provisioner names zips (it goes into a header
/// and a path; checked, not trusted).
#[cfg(feature = "export")]
fn is_export_name(name: &str) -> bool {
    name.strip_prefix("lablink_data")
        .and_then(|r| r.strip_suffix(".zip"))
        .is_some_and(|d| d.len() == 14 && d.bytes().all(|b| b.is_ascii_digit()))
}

// ---- the VM's report ----------------------------------------------------------------

pub const VM_EXPORT: Route = Route {
    function: "vm-export",
    verb: Verb::Post,
    path: "/api/vm-export/{hostname}",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(vm_export),
};

/// `POST /api/vm-export/{hostname}`: a VM's progress on the open export (its credential
/// only: never in legacy mode). 404 when the VM is not part of that export, 409 once the
/// export stopped collecting or the VM's answer is final.
async fn vm_export(state: &AppState, req: &Request) -> Reply {
    let host = request::path_hostname(req)?;
    let r: wire::ExportReport = request::json(req, SMALL_BODY)?;
    let job = JobId::parse(&r.job_id).map_err(|e| ApiError::bad_request(format!("job_id: {e}")))?;
    let count = |n: u64| {
        i64::try_from(n).map_err(|_| ApiError::bad_request("files, bytes and skipped must fit in 63 bits"))
    };
    let report = match r.state {
        wire::ExportState::Uploading => exports::Report::Uploading,
        wire::ExportState::Done {
            files,
            bytes,
            skipped,
        } => exports::Report::Done {
            files: count(files)?,
            bytes: count(bytes)?,
            skipped: count(skipped)?,
        },
        wire::ExportState::NoFiles { skipped } => exports::Report::NoFiles {
            skipped: count(skipped)?,
        },
        wire::ExportState::Failed { detail } => exports::Report::Failed {
            detail: detail
                .unwrap_or_else(|| "no reason given".into())
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(1000)
                .collect(),
        },
    };
    if auth::require_vm(state, req, &host).await? != auth::Access::Vm {
        return Err(ApiError::Unauthorized);
    }
    let client = state.db.client().await?;
    match exports::report(&client, &job, &host, &report).await? {
        Ok(()) => Ok(json(StatusCode::OK, &wire::ExportAccepted::default())),
        Err(exports::Refused::NotFound) => {
            Err(ApiError::NotFound(format!("{host} is not part of export {job}")))
        }
        Err(exports::Refused::Closed) => Err(ApiError::Conflict(format!(
            "export {job} no longer takes this report from {host} (past its deadline, or already answered)"
        ))),
    }
}
