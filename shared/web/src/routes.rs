//! Every HTTP route of the API, one handler each. A route's Lambda serves exactly one
//! [`Route`]; the local runner mounts them all. Contracts: seed 004 §2 and the design
//! brief's "Wire contracts to keep" (classic paths, fields and keys; additions only).

use chrono::{DateTime, Utc};
use lablink_core::db::{self, exports, logs, vms};
use lablink_core::domain::{
    CrdCommand, Email, GpuHealth, Hostname, Pin, RawTimings, StartupTimings, VmStatus,
};
use lablink_templates as pages;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use crate::error::{html, json};
use crate::request::{self, LOG_BODY, SMALL_BODY};
use crate::{ApiError, AppState};
use crate::{admin, auth};

/// The routes served by Lambdas in this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Index,
    RequestVm,
    UnassignedVmsCount,
    UpdateInuseStatus,
    GpuHealth,
    PostVmStatus,
    ListVmStatus,
    GetVmStatus,
    PostVmLogs,
    GetVmLogs,
    PostVmMetrics,
    Health,
    Enroll,
    AdminLoginPage,
    AdminLogin,
    AdminLogout,
    AdminHome,
    AdminCreate,
    AdminInstances,
    AdminDelete,
    AdminLogs,
    AdminJob,
    Launch,
    Destroy,
    GetJob,
    SetAwsCredentials,
    UnsetAwsCredentials,
    ScpClient,
    VmExport,
    ExportDownload,
}

impl Route {
    pub const ALL: [Route; 30] = [
        Route::Index,
        Route::RequestVm,
        Route::UnassignedVmsCount,
        Route::UpdateInuseStatus,
        Route::GpuHealth,
        Route::PostVmStatus,
        Route::ListVmStatus,
        Route::GetVmStatus,
        Route::PostVmLogs,
        Route::GetVmLogs,
        Route::PostVmMetrics,
        Route::Health,
        Route::Enroll,
        Route::AdminLoginPage,
        Route::AdminLogin,
        Route::AdminLogout,
        Route::AdminHome,
        Route::AdminCreate,
        Route::AdminInstances,
        Route::AdminDelete,
        Route::AdminLogs,
        Route::AdminJob,
        Route::Launch,
        Route::Destroy,
        Route::GetJob,
        Route::SetAwsCredentials,
        Route::UnsetAwsCredentials,
        Route::ScpClient,
        Route::VmExport,
        Route::ExportDownload,
    ];

    /// Method and API Gateway route path.
    pub fn method_and_path(self) -> (Method, &'static str) {
        match self {
            Route::Index => (Method::GET, "/"),
            Route::RequestVm => (Method::POST, "/api/request_vm"),
            Route::UnassignedVmsCount => (Method::GET, "/api/unassigned_vms_count"),
            Route::UpdateInuseStatus => (Method::POST, "/api/update_inuse_status"),
            Route::GpuHealth => (Method::POST, "/api/gpu_health"),
            Route::PostVmStatus => (Method::POST, "/api/vm-status"),
            Route::ListVmStatus => (Method::GET, "/api/vm-status"),
            Route::GetVmStatus => (Method::GET, "/api/vm-status/{hostname}"),
            Route::PostVmLogs => (Method::POST, "/api/vm-logs"),
            Route::GetVmLogs => (Method::GET, "/api/vm-logs/{hostname}"),
            Route::PostVmMetrics => (Method::POST, "/api/vm-metrics/{hostname}"),
            Route::Health => (Method::GET, "/api/health"),
            Route::Enroll => (Method::POST, "/api/enroll"),
            Route::AdminLoginPage => (Method::GET, "/admin/login"),
            Route::AdminLogin => (Method::POST, "/admin/login"),
            Route::AdminLogout => (Method::POST, "/admin/logout"),
            Route::AdminHome => (Method::GET, "/admin"),
            Route::AdminCreate => (Method::GET, "/admin/create"),
            Route::AdminInstances => (Method::GET, "/admin/instances"),
            Route::AdminDelete => (Method::GET, "/admin/instances/delete"),
            Route::AdminLogs => (Method::GET, "/admin/logs/{hostname}"),
            Route::AdminJob => (Method::GET, "/admin/jobs/{id}"),
            Route::Launch => (Method::POST, "/api/launch"),
            Route::Destroy => (Method::POST, "/destroy"),
            Route::GetJob => (Method::GET, "/api/jobs/{id}"),
            Route::SetAwsCredentials => (Method::POST, "/api/admin/set-aws-credentials"),
            Route::UnsetAwsCredentials => (Method::POST, "/api/admin/unset-aws-credentials"),
            Route::ScpClient => (Method::GET, "/api/scp-client"),
            Route::VmExport => (Method::POST, "/api/vm-export/{hostname}"),
            Route::ExportDownload => (Method::GET, "/api/exports/{id}/download"),
        }
    }

    /// The function (crate, binary) that serves this route.
    pub fn function_name(self) -> &'static str {
        match self {
            Route::Index => "index",
            Route::RequestVm => "request-vm",
            Route::UnassignedVmsCount => "unassigned-vms-count",
            Route::UpdateInuseStatus => "update-inuse-status",
            Route::GpuHealth => "gpu-health",
            Route::PostVmStatus => "post-vm-status",
            Route::ListVmStatus => "list-vm-status",
            Route::GetVmStatus => "get-vm-status",
            Route::PostVmLogs => "post-vm-logs",
            Route::GetVmLogs => "get-vm-logs",
            Route::PostVmMetrics => "post-vm-metrics",
            Route::Health => "health",
            Route::Enroll => "enroll",
            Route::AdminLoginPage => "admin-login-page",
            Route::AdminLogin => "admin-login",
            Route::AdminLogout => "admin-logout",
            Route::AdminHome => "admin-home",
            Route::AdminCreate => "admin-create",
            Route::AdminInstances => "admin-instances",
            Route::AdminDelete => "admin-delete",
            Route::AdminLogs => "admin-logs",
            Route::AdminJob => "admin-job",
            Route::Launch => "launch",
            Route::Destroy => "destroy",
            Route::GetJob => "get-job",
            Route::SetAwsCredentials => "set-aws-credentials",
            Route::UnsetAwsCredentials => "unset-aws-credentials",
            Route::ScpClient => "scp-client",
            Route::VmExport => "vm-export",
            Route::ExportDownload => "export-download",
        }
    }

    /// Whether `path` matches this route's path pattern (`{param}` is one segment).
    pub fn matches_path(self, path: &str) -> bool {
        let pattern = self.method_and_path().1;
        let mut p = pattern.split('/');
        let mut a = path.split('/');
        loop {
            match (p.next(), a.next()) {
                (None, None) => return true,
                (Some(seg), Some(got)) if seg.starts_with('{') => {
                    if got.is_empty() {
                        return false;
                    }
                }
                (Some(seg), Some(got)) if seg == got => {}
                _ => return false,
            }
        }
    }

    /// Serve one request: method check, then the handler; every error becomes its
    /// response here.
    pub async fn handle(self, state: &AppState, req: Request) -> Response<Body> {
        let (method, _) = self.method_and_path();
        let result = if req.method() != method && !(method == Method::GET && req.method() == Method::HEAD) {
            Err(ApiError::MethodNotAllowed(if method == Method::GET {
                "GET"
            } else {
                "POST"
            }))
        } else {
            match self {
                Route::Index => index(state).await,
                Route::RequestVm => request_vm(state, &req).await,
                Route::UnassignedVmsCount => unassigned_vms_count(state).await,
                Route::UpdateInuseStatus => update_inuse_status(state, &req).await,
                Route::GpuHealth => gpu_health(state, &req).await,
                Route::PostVmStatus => post_vm_status(state, &req).await,
                Route::ListVmStatus => list_vm_status(state, &req).await,
                Route::GetVmStatus => get_vm_status(state, &req).await,
                Route::PostVmLogs => post_vm_logs(state, &req).await,
                Route::GetVmLogs => get_vm_logs(state, &req).await,
                Route::PostVmMetrics => post_vm_metrics(state, &req).await,
                Route::Health => health(state).await,
                Route::Enroll => admin::enroll(state, &req).await,
                Route::AdminLoginPage => admin::login_page(state, &req).await,
                Route::AdminLogin => admin::login(state, &req).await,
                Route::AdminLogout => admin::logout(state, &req).await,
                Route::AdminHome => admin::home(state, &req).await,
                Route::AdminCreate => admin::create(state, &req).await,
                Route::AdminInstances => admin::instances(state, &req).await,
                Route::AdminDelete => admin::delete_page(state, &req).await,
                Route::AdminLogs => admin::logs_page(state, &req).await,
                Route::AdminJob => admin::job_page(state, &req).await,
                Route::Launch => admin::launch(state, &req).await,
                Route::Destroy => admin::destroy(state, &req).await,
                Route::GetJob => admin::get_job(state, &req).await,
                Route::SetAwsCredentials => admin::set_aws_credentials(state, &req).await,
                Route::UnsetAwsCredentials => admin::unset_aws_credentials(state, &req).await,
                Route::ScpClient => admin::scp_client(state, &req).await,
                Route::VmExport => vm_export(state, &req).await,
                Route::ExportDownload => admin::export_download(state, &req).await,
            }
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                if e.status().is_client_error() {
                    tracing::info!(route = self.function_name(), status = e.status().as_u16(), error = %e, "refused");
                }
                e.into_response()
            }
        }
    }
}

type Reply = Result<Response<Body>, ApiError>;

fn message(text: &str) -> Response<Body> {
    json(StatusCode::OK, &json!({ "message": text }))
}

fn hostname_field(raw: &str) -> Result<Hostname, ApiError> {
    Hostname::parse(raw).map_err(|e| ApiError::bad_request(format!("invalid hostname: {e}")))
}

fn not_found(host: &Hostname) -> ApiError {
    ApiError::NotFound(format!("unknown VM {host}"))
}

// ---- participant ----------------------------------------------------------------

async fn index(state: &AppState) -> Reply {
    let client = state.db.client().await?;
    let free = vms::free_seat_count(&client).await?;
    Ok(html(
        StatusCode::OK,
        pages::participant_page(&pages::ParticipantPage {
            free_vms: free,
            email: "",
            crd_command: "",
            error: None,
        }),
    ))
}

#[derive(Deserialize)]
struct VmRequestForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    crd_command: String,
}

/// `POST /api/request_vm` (form). Bad input re-renders the form with the reason, keeping
/// what was typed (400); no free VM re-renders it with "no VMs available" (200, not an
/// error page); success shows hostname and PIN. Nothing is written on any refusal.
async fn request_vm(state: &AppState, req: &Request) -> Reply {
    let form: VmRequestForm = request::form(req, SMALL_BODY)?;
    let form_again = |status: StatusCode, error: &str, free: i64| {
        html(
            status,
            pages::participant_page(&pages::ParticipantPage {
                free_vms: free,
                email: &form.email,
                crd_command: &form.crd_command,
                error: Some(error),
            }),
        )
    };
    let parsed = Email::parse(&form.email)
        .map_err(|e| format!("Email: {e}."))
        .and_then(|email| {
            Ok((
                email,
                CrdCommand::parse(&form.crd_command)
                    .map_err(|e| format!("Chrome Remote Desktop command: {e}."))?,
            ))
        });
    let (email, command) = match parsed {
        Ok(v) => v,
        Err(reason) => {
            return Ok(form_again(
                StatusCode::BAD_REQUEST,
                &reason,
                free_count_or_zero(state).await,
            ));
        }
    };
    let client = state.db.client().await?;
    match vms::assign(&client, &email, &command, &Pin::generate()).await? {
        Some(a) => {
            tracing::info!(hostname = %a.hostname, fresh = a.fresh, "VM assigned");
            Ok(html(
                StatusCode::OK,
                pages::success_page(a.hostname.as_str(), a.pin.as_str()),
            ))
        }
        None => Ok(form_again(
            StatusCode::OK,
            "No VMs available right now. Keep this page open: the count above updates; try again when it is above 0.",
            0,
        )),
    }
}

/// The form shown again with an error carries the live count too; if even that read
/// fails, 0 is shown rather than hiding the participant's own mistake behind an outage.
async fn free_count_or_zero(state: &AppState) -> i64 {
    match state.db.client().await {
        Ok(c) => vms::free_seat_count(&c).await.unwrap_or(0),
        Err(_) => 0,
    }
}

async fn unassigned_vms_count(state: &AppState) -> Reply {
    let client = state.db.client().await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "count": vms::free_seat_count(&client).await? }),
    ))
}

// ---- VM reports --------------------------------------------------------------------

#[derive(Deserialize)]
struct InUseReport {
    hostname: String,
    status: bool,
}

async fn update_inuse_status(state: &AppState, req: &Request) -> Reply {
    let body: InUseReport = request::json(req, SMALL_BODY)?;
    let host = hostname_field(&body.hostname)?;
    auth::require_vm(state, req, &host).await?;
    let client = state.db.client().await?;
    if !vms::set_in_use(&client, &host, body.status).await? {
        return Err(not_found(&host));
    }
    Ok(message("In-use status updated successfully."))
}

#[derive(Deserialize)]
struct GpuReport {
    hostname: String,
    gpu_status: serde_json::Value,
}

async fn gpu_health(state: &AppState, req: &Request) -> Reply {
    let body: GpuReport = request::json(req, SMALL_BODY)?;
    let host = hostname_field(&body.hostname)?;
    let health = GpuHealth::from_json(&body.gpu_status).map_err(ApiError::bad_request)?;
    auth::require_vm(state, req, &host).await?;
    let client = state.db.client().await?;
    if !vms::set_gpu_health(&client, &host, health).await? {
        return Err(not_found(&host));
    }
    Ok(message("GPU health status updated successfully."))
}

#[derive(Deserialize)]
struct StatusReport {
    hostname: String,
    status: String,
    /// Extension: why, for `error`.
    #[serde(default)]
    reason: Option<String>,
}

async fn post_vm_status(state: &AppState, req: &Request) -> Reply {
    let body: StatusReport = request::json(req, SMALL_BODY)?;
    let host = hostname_field(&body.hostname)?;
    let status = VmStatus::parse(&body.status).map_err(ApiError::bad_request)?;
    auth::require_vm(state, req, &host).await?;
    let client = state.db.client().await?;
    if !vms::set_status(&client, &host, status, body.reason.as_deref()).await? {
        return Err(not_found(&host));
    }
    Ok(message("VM status updated successfully."))
}

async fn list_vm_status(state: &AppState, req: &Request) -> Reply {
    auth::require_admin(state, req).await?;
    let client = state.db.client().await?;
    let all: Vec<_> = vms::list_statuses(&client)
        .await?
        .into_iter()
        .map(|(h, s)| json!({ "hostname": h, "status": s.as_str() }))
        .collect();
    Ok(json(StatusCode::OK, &serde_json::Value::Array(all)))
}

async fn get_vm_status(state: &AppState, req: &Request) -> Reply {
    let host = request::path_hostname(req)?;
    auth::require_vm_or_admin(state, req, &host).await?;
    let client = state.db.client().await?;
    let status = vms::get_status(&client, &host)
        .await?
        .ok_or_else(|| not_found(&host))?;
    Ok(json(
        StatusCode::OK,
        &json!({ "hostname": host, "status": status.as_str() }),
    ))
}

async fn post_vm_metrics(state: &AppState, req: &Request) -> Reply {
    let host = request::path_hostname(req)?;
    let raw: RawTimings = request::json(req, SMALL_BODY)?;
    let timings = StartupTimings::parse(&raw).map_err(ApiError::bad_request)?;
    auth::require_vm(state, req, &host).await?;
    let client = state.db.client().await?;
    let total = vms::record_timings(&client, &host, &timings)
        .await?
        .ok_or_else(|| not_found(&host))?;
    Ok(json(
        StatusCode::OK,
        &json!({ "message": "VM metrics posted successfully.", "total_startup_seconds": total }),
    ))
}

// ---- data export ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportReport {
    job_id: String,
    state: String,
    #[serde(default)]
    files: i64,
    #[serde(default)]
    bytes: i64,
    #[serde(default)]
    skipped: i64,
    #[serde(default)]
    detail: Option<String>,
}

/// `POST /api/vm-export/{hostname}`: a VM's progress on the open export (its credential
/// only: never in legacy mode). 404 when the VM is not part of that export, 409 once the
/// export stopped collecting or the VM's answer is final.
async fn vm_export(state: &AppState, req: &Request) -> Reply {
    let host = request::path_hostname(req)?;
    let r: ExportReport = request::json(req, SMALL_BODY)?;
    lablink_ops::JobId::parse(&r.job_id).map_err(|e| ApiError::bad_request(format!("job_id: {e}")))?;
    if r.files < 0 || r.bytes < 0 || r.skipped < 0 {
        return Err(ApiError::bad_request(
            "files, bytes and skipped cannot be negative",
        ));
    }
    let report = match r.state.as_str() {
        "uploading" => exports::Report::Uploading,
        "done" => exports::Report::Done {
            files: r.files,
            bytes: r.bytes,
            skipped: r.skipped,
        },
        "no_files" => exports::Report::NoFiles { skipped: r.skipped },
        "failed" => exports::Report::Failed {
            detail: r
                .detail
                .unwrap_or_else(|| "no reason given".into())
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(1000)
                .collect(),
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "state must be uploading, done, no_files or failed, not {other:?}"
            )));
        }
    };
    if auth::require_vm(state, req, &host).await? != auth::Access::Vm {
        return Err(ApiError::Unauthorized);
    }
    let client = state.db.client().await?;
    match exports::report(&client, &r.job_id, &host, &report).await? {
        Ok(()) => Ok(json(StatusCode::OK, &json!({ "status": "ok" }))),
        Err(exports::Refused::NotFound) => Err(ApiError::NotFound(format!(
            "{host} is not part of export {}",
            r.job_id
        ))),
        Err(exports::Refused::Closed) => Err(ApiError::Conflict(format!(
            "export {} no longer takes this report from {host} (past its deadline, or already answered)",
            r.job_id
        ))),
    }
}

// ---- logs --------------------------------------------------------------------------

/// The classic shape, plus optional per-message event ids and timestamps so a sender's
/// retry is deduplicated (without ids, each line gets a fresh one: a retry may repeat
/// lines but never loses them).
#[derive(Deserialize)]
struct LogBatch {
    #[serde(default)]
    log_group: Option<String>,
    log_stream: String,
    messages: Vec<String>,
    #[serde(default)]
    event_ids: Option<Vec<String>>,
    #[serde(default)]
    timestamps: Option<Vec<DateTime<Utc>>>,
}

pub const MAX_LOG_LINES_PER_BATCH: usize = 10_000;

async fn post_vm_logs(state: &AppState, req: &Request) -> Reply {
    let batch: LogBatch = request::json(req, LOG_BODY)?;
    let host = Hostname::parse(&batch.log_stream)
        .map_err(|e| ApiError::bad_request(format!("log_stream must be the VM's hostname: {e}")))?;
    let n = batch.messages.len();
    if n > MAX_LOG_LINES_PER_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LOG_LINES_PER_BATCH} messages per batch"
        )));
    }
    if batch
        .event_ids
        .as_ref()
        .is_some_and(|ids| ids.len() != n || ids.iter().any(|i| i.is_empty() || i.len() > 128))
    {
        return Err(ApiError::bad_request(
            "event_ids must hold one non-empty id (at most 128 characters) per message",
        ));
    }
    if batch.timestamps.as_ref().is_some_and(|t| t.len() != n) {
        return Err(ApiError::bad_request(
            "timestamps must hold one RFC 3339 time per message",
        ));
    }
    auth::require_log_writer(state, req, &host).await?;
    let now = Utc::now();
    let lines: Vec<logs::LogLine> = batch
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| logs::LogLine {
            event_id: match &batch.event_ids {
                Some(ids) => ids[i].clone(),
                None => lablink_core::credential::Secret::generate().expose()[..32].to_owned(),
            },
            logged_at: batch.timestamps.as_ref().map_or(now, |t| t[i]),
            message,
        })
        .collect();
    let client = state.db.client().await?;
    let stored = logs::append(&client, &host, &lines)
        .await?
        .ok_or_else(|| not_found(&host))?;
    tracing::debug!(hostname = %host, group = batch.log_group.as_deref().unwrap_or(""), received = n, stored, "log batch");
    Ok(json(
        StatusCode::OK,
        &json!({ "message": "VM logs posted successfully.", "stored": stored }),
    ))
}

pub const MAX_LOG_PAGE: i64 = 5_000;

/// `GET /api/vm-logs/{hostname}?after=<cursor>&limit=<n>`: only lines after the cursor.
/// Classic key `logs` (the lines joined) is kept; `lines` and `next` are additions.
async fn get_vm_logs(state: &AppState, req: &Request) -> Reply {
    let host = request::path_hostname(req)?;
    let after: i64 = request::query(req, "after")?.unwrap_or(0);
    let limit: i64 = request::query(req, "limit")?.unwrap_or(1000);
    if after < 0 || !(1..=MAX_LOG_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "after must be ≥ 0 and limit from 1 to {MAX_LOG_PAGE}"
        )));
    }
    auth::require_vm_or_admin(state, req, &host).await?;
    let client = state.db.client().await?;
    let status = vms::get_status(&client, &host)
        .await?
        .ok_or_else(|| not_found(&host))?;
    let lines = logs::read_after(&client, &host, after, limit).await?;
    if lines.is_empty() && after == 0 && status == VmStatus::Initializing {
        return Err(ApiError::Unavailable(
            "VM is installing CloudWatch agent; logs are not available yet".into(),
        ));
    }
    let next = lines.last().map_or(after, |l| l.cursor);
    let text: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
    Ok(json(
        StatusCode::OK,
        &json!({
            "hostname": host,
            "status": status.as_str(),
            "logs": text.join("\n"),
            "lines": lines,
            "next": next,
        }),
    ))
}

// ---- health ------------------------------------------------------------------------

async fn health(state: &AppState) -> Reply {
    let client = state
        .db
        .client()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database unreachable: {e}")))?;
    let version = db::schema_version(&client).await?;
    let expected = db::latest_known_version();
    let ok = version == Some(expected);
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "database": "reachable",
        "schema_version": version,
        "expected_schema_version": expected,
    });
    Ok(json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    ))
}
