//! The VM's routes: the daemon's reports (status, GPU health, in-use, startup timings,
//! logs) and the reads of a VM's status and logs. A report needs the VM's own
//! credential ([`auth::require_vm`]); reads may also come from an admin (feature
//! `admin`). Postgres only: no AWS client.

use chrono::Utc;
use lablink_core::domain::{GpuHealth, Hostname, RawTimings, StartupTimings, VmStatus};
use lablink_db::{logs, vms};
use lablink_wire as wire;
use lambda_http::Request;
use lambda_http::http::StatusCode;
#[cfg(feature = "admin")]
use serde_json::json;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler, message, not_found};
use crate::auth;
use crate::request::{self, LOG_BODY, SMALL_BODY};
use crate::respond::json;
use crate::{ApiError, AppState};

fn hostname_field(raw: &str) -> Result<Hostname, ApiError> {
    Hostname::parse(raw).map_err(|e| ApiError::bad_request(format!("invalid hostname: {e}")))
}

pub const UPDATE_INUSE_STATUS: Route = Route {
    function: "update-inuse-status",
    verb: Verb::Post,
    path: "/api/update_inuse_status",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(update_inuse_status),
};

async fn update_inuse_status(state: &AppState, req: &Request) -> Reply {
    let body: wire::InUseReport = request::json(req, SMALL_BODY)?;
    let host = hostname_field(&body.hostname)?;
    auth::require_vm(state, req, &host).await?;
    let client = state.db.client().await?;
    if !vms::set_in_use(&client, &host, body.status).await? {
        return Err(not_found(&host));
    }
    Ok(message("In-use status updated successfully."))
}

pub const GPU_HEALTH: Route = Route {
    function: "gpu-health",
    verb: Verb::Post,
    path: "/api/gpu_health",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(gpu_health),
};

async fn gpu_health(state: &AppState, req: &Request) -> Reply {
    let body: wire::GpuHealthReport = request::json(req, SMALL_BODY)?;
    let host = hostname_field(&body.hostname)?;
    let health = GpuHealth::from_wire(&body.gpu_status).map_err(ApiError::bad_request)?;
    auth::require_vm(state, req, &host).await?;
    let client = state.db.client().await?;
    if !vms::set_gpu_health(&client, &host, health).await? {
        return Err(not_found(&host));
    }
    Ok(message("GPU health status updated successfully."))
}

pub const POST_VM_STATUS: Route = Route {
    function: "post-vm-status",
    verb: Verb::Post,
    path: "/api/vm-status",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(post_vm_status),
};

async fn post_vm_status(state: &AppState, req: &Request) -> Reply {
    let body: wire::VmStatusReport = request::json(req, SMALL_BODY)?;
    let host = hostname_field(&body.hostname)?;
    let status = VmStatus::parse(&body.status).map_err(ApiError::bad_request)?;
    auth::require_vm(state, req, &host).await?;
    let start_host = body.start_host.as_ref().map(|o| vms::StartHostReport {
        ok: o.ok,
        exit_code: o.exit_code,
        output: &o.output,
        assignment: o.assignment.as_deref(),
    });
    let reset = match body.reset {
        Some(n) => Some(i64::try_from(n).map_err(|_| ApiError::bad_request("reset: out of range"))?),
        None => None,
    };
    let client = state.db.client().await?;
    let reason = body.reason.as_deref();
    if !vms::set_status_after_start_host(&client, &host, status, reason, start_host, reset).await? {
        return Err(not_found(&host));
    }
    Ok(message("VM status updated successfully."))
}

#[cfg(feature = "admin")]
pub const LIST_VM_STATUS: Route = Route {
    function: "list-vm-status",
    verb: Verb::Get,
    path: "/api/vm-status",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(list_vm_status),
};

#[cfg(feature = "admin")]
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

#[cfg(feature = "admin")]
pub const GET_VM_STATUS: Route = Route {
    function: "get-vm-status",
    verb: Verb::Get,
    path: "/api/vm-status/{hostname}",
    access: Access::Vm,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(get_vm_status),
};

#[cfg(feature = "admin")]
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

pub const POST_VM_METRICS: Route = Route {
    function: "post-vm-metrics",
    verb: Verb::Post,
    path: "/api/vm-metrics/{hostname}",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(post_vm_metrics),
};

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
        &wire::MetricsAccepted {
            message: "VM metrics posted successfully.".into(),
            total_startup_seconds: total,
        },
    ))
}

// ---- logs ----------------------------------------------------------------------------

/// `POST /api/vm-logs`: the classic shape, plus optional per-message event ids and
/// timestamps so a sender's retry is deduplicated (without ids, each line gets a fresh
/// one: a retry may repeat lines but never loses them).
pub const POST_VM_LOGS: Route = Route {
    function: "post-vm-logs",
    verb: Verb::Post,
    path: "/api/vm-logs",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(post_vm_logs),
};

pub const MAX_LOG_LINES_PER_BATCH: usize = 10_000;

async fn post_vm_logs(state: &AppState, req: &Request) -> Reply {
    let batch: wire::LogBatch = request::json(req, LOG_BODY)?;
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
        &wire::LogsAccepted {
            message: "VM logs posted successfully.".into(),
            stored,
        },
    ))
}

#[cfg(feature = "admin")]
pub const GET_VM_LOGS: Route = Route {
    function: "get-vm-logs",
    verb: Verb::Get,
    path: "/api/vm-logs/{hostname}",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(get_vm_logs),
};

pub const MAX_LOG_PAGE: i64 = 5_000;

/// `GET /api/vm-logs/{hostname}?after=<cursor>&limit=<n>`: only lines after the cursor.
/// Classic key `logs` (the lines joined) is kept; `lines` and `next` are additions.
#[cfg(feature = "admin")]
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
    let dropped = logs::dropped(&client, &host).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "hostname": host,
            "status": status.as_str(),
            "logs": text.join("\n"),
            "lines": lines,
            "next": next,
            "dropped": dropped,
        }),
    ))
}
