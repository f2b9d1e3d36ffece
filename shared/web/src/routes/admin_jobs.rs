//! The admin's job routes: launch and destroy (a form from the console or JSON from a
//! script; the form's job id is the idempotency key) and a job's status. A job goes to
//! the job store (DynamoDB, or the local runner's embedded store); the provisioner runs
//! it. A browser's refused form gets a page (the routes' `on_error`), a script JSON.

use chrono::Utc;
use lablink_core::domain::Email;
use lablink_core::domain::JobId;
use lablink_core::vm_settings::LaunchOverrides;
use lablink_db::seats::{self, ActionOutcome};
use lablink_db::{exports, fleet, vms};
use lablink_ops::{Job, JobKind, Submitted};
use lambda_http::Request;
use lambda_http::http::{StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::auth::{self, Admin};
use crate::request::{self, SMALL_BODY, wants_html};
use crate::respond::{json, redirect};
use crate::{ApiError, AppState};

pub const GET_JOB: Route = Route {
    function: "get-job",
    verb: Verb::Get,
    path: "/api/jobs/{id}",
    access: Access::Admin,
    features: &["admin", "jobs"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::Json,
    handler: handler!(get_job),
};

async fn get_job(state: &AppState, req: &Request) -> Reply {
    let id = request::path_job_id(req)?;
    auth::require_admin(state, req).await?;
    let job = state
        .jobs()
        .await?
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let mut v = job_json(&job);
    if job.kind == JobKind::Export {
        // Per-VM progress lives in Postgres, where the VMs report it.
        let client = state.db.client().await?;
        v["export_vms"] = json!(exports::progress(&client, &id).await?);
        if let (Some((export_state, deadline)), Some(o)) =
            (exports::state(&client, &id).await?, v.as_object_mut())
        {
            o.insert("export_state".into(), json!(export_state));
            o.insert("export_deadline".into(), json!(deadline));
        }
        if job.export.is_some() {
            v["download_url"] = json!(format!("/api/exports/{id}/download"));
        }
    }
    Ok(json(StatusCode::OK, &v))
}

pub(crate) fn job_json(job: &Job) -> serde_json::Value {
    let mut v = serde_json::to_value(job).expect("jobs serialize");
    if let Some(o) = v.as_object_mut() {
        o.remove("version");
        o.remove("lease_until");
        o.insert("url".into(), json!(format!("/admin/jobs/{}", job.id)));
    }
    v
}

/// A launch or destroy body: a form (browser) or JSON (script).
#[derive(Deserialize, Default)]
struct JobForm {
    #[serde(default)]
    csrf: Option<String>,
    /// The idempotency key (a job id); scripts may leave it out.
    #[serde(default, alias = "idempotency_key")]
    job_id: Option<String>,
    #[serde(default)]
    num_vms: Option<String>,
    #[serde(default)]
    confirm: Option<String>,
    /// Launch: this launch's instance type, client image and tutorial repository
    /// (empty: the deployment's).
    #[serde(default)]
    instance_type: Option<String>,
    #[serde(default)]
    client_image: Option<String>,
    #[serde(default)]
    tutorial_repo: Option<String>,
    /// Reassign: the new participant's email.
    #[serde(default)]
    email: Option<String>,
    /// Release: keep the participant's files for the next data export (`on`/`true`).
    #[serde(default)]
    keep_files: Option<String>,
    /// Launch: when the fleet is destroyed, in hours from now (1..168; default
    /// `LABLINK_FLEET_HOURS`), or as a time (RFC 3339).
    #[serde(default)]
    ends_in_hours: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
}

impl JobForm {
    /// The launch's overrides, each checked (a 400 names the field).
    fn overrides(&self) -> Result<LaunchOverrides, ApiError> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let o = LaunchOverrides {
            instance_type: given(&self.instance_type),
            client_image: given(&self.client_image),
            tutorial_repo: given(&self.tutorial_repo),
        };
        o.check().map_err(ApiError::bad_request)?;
        Ok(o)
    }
}

fn job_form(req: &Request) -> Result<JobForm, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let v: serde_json::Value = request::json(req, SMALL_BODY)?;
        // JSON may carry num_vms as a number.
        let s = |k: &str| match &v[k] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(JobForm {
            csrf: s("csrf"),
            job_id: s("job_id").or_else(|| s("idempotency_key")),
            num_vms: s("num_vms"),
            confirm: s("confirm"),
            instance_type: s("instance_type"),
            client_image: s("client_image"),
            tutorial_repo: s("tutorial_repo"),
            email: s("email"),
            keep_files: match &v["keep_files"] {
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => s("keep_files"),
            },
            ends_in_hours: s("ends_in_hours"),
            ends_at: s("ends_at"),
        })
    } else {
        request::form(req, SMALL_BODY)
    }
}

pub const VM_ACTION: Route = Route {
    function: "admin-vm-action",
    verb: Verb::Post,
    path: "/api/admin/vms/{hostname}/{action}",
    access: Access::Admin,
    features: &["admin", "jobs"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::PageOrJson {
        back: "/admin/instances",
        label: "Back to Instances",
    },
    handler: handler!(vm_action),
};

/// `POST /api/admin/vms/{hostname}/{action}`: the admin acts on one VM (a form from the
/// instances page, or JSON from a script; the admin write rules of every other route).
/// - `release` (`keep_files`): the seat is freed and the daemon resets the workspace;
///   the VM rejoins the pool when it reports the reset done.
/// - `reassign` (`email`): the seat, as it is, moves to another participant.
/// - `replace`: a job terminates the instance and launches one in its place.
///
/// Each is recorded (who, when, which VM) and shown on the VM's row. A browser is sent
/// back to the instances page (or to the replace job's page); a script gets JSON.
async fn vm_action(state: &AppState, req: &Request) -> Reply {
    let form = job_form(req)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let host = request::path_param_in(req, VM_ACTION.path, "hostname")
        .ok_or_else(|| ApiError::bad_request("the path has no hostname"))
        .and_then(|h| {
            lablink_core::domain::Hostname::parse(&h)
                .map_err(|e| ApiError::bad_request(format!("invalid hostname in path: {e}")))
        })?;
    let action = request::path_param_in(req, VM_ACTION.path, "action").unwrap_or_default();
    let client = state.db.client().await?;
    let outcome = match action.as_str() {
        "release" => {
            let keep = match form.keep_files.as_deref().map(str::trim) {
                None | Some("" | "false" | "off" | "0") => false,
                Some("on" | "true" | "1") => true,
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "keep_files must be true or false, got {v:?}"
                    )));
                }
            };
            seats::release(&client, &host, keep, &admin.user).await?
        }
        "reassign" => {
            let raw = form.email.as_deref().unwrap_or("").trim();
            let email = Email::parse(raw).map_err(|e| ApiError::bad_request(format!("email: {e}")))?;
            seats::reassign(&client, &host, &email, &admin.user).await?
        }
        "replace" => {
            if vms::get_vm(&client, &host).await?.is_none() {
                return Err(super::not_found(&host));
            }
            let id = idempotency_key(&form)?;
            let job_id = id.as_str().to_owned();
            let kind = JobKind::Replace {
                hostname: host.as_str().to_owned(),
            };
            let reply = submit(state, req, &admin, id, kind).await?;
            // Recorded once the job is accepted (a busy fleet refuses it above).
            seats::record_replace(&client, &host, &job_id, &admin.user).await?;
            return Ok(reply);
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no VM action {other:?}: use release, reassign or replace"
            )));
        }
    };
    match outcome {
        ActionOutcome::UnknownVm => Err(super::not_found(&host)),
        ActionOutcome::Refused(why) => Err(ApiError::Conflict(why)),
        ActionOutcome::Done { previous_email } => {
            tracing::info!(%host, action, admin = %admin.user, "VM action done");
            if wants_html(req) {
                return Ok(redirect("/admin/instances"));
            }
            let message = match action.as_str() {
                "release" => format!("{host} released; it rejoins the pool once its workspace is reset"),
                _ => format!("{host} reassigned; the new participant sends their code from the start page"),
            };
            Ok(json(
                StatusCode::OK,
                &json!({ "message": message, "hostname": host, "action": action, "previous_email": previous_email }),
            ))
        }
    }
}

async fn submit(state: &AppState, req: &Request, admin: &Admin, id: JobId, kind: JobKind) -> Reply {
    submit_job(state, req, Job::new(id, kind, &admin.user, Utc::now())).await
}

async fn submit_job(state: &AppState, req: &Request, job: Job) -> Reply {
    let store = state.jobs().await?;
    submitted_reply(req, lablink_ops::submit(store.as_ref(), job, Utc::now()).await?)
}

/// The answer to a submission: the job (a browser goes to its page), or 409 while
/// another job holds the fleet.
fn submitted_reply(req: &Request, submitted: Submitted) -> Reply {
    let (job, status) = match submitted {
        Submitted::Created(j) => (j, StatusCode::ACCEPTED),
        Submitted::Existing(j) => (j, StatusCode::OK),
        Submitted::Busy(holder) => {
            let msg = match holder {
                Some(h) => format!(
                    "Another job is running: {} (job {}, {}). Wait for it to finish, then try again.",
                    h.kind.label(),
                    h.id,
                    h.state.as_str()
                ),
                None => "Another launch or destroy is running. Wait for it to finish, then try again.".into(),
            };
            return Err(ApiError::Conflict(msg));
        }
    };
    if wants_html(req) {
        return Ok(redirect(&format!("/admin/jobs/{}", job.id)));
    }
    Ok(json(status, &job_json(&job)))
}

fn idempotency_key(form: &JobForm) -> Result<JobId, ApiError> {
    match form.job_id.as_deref() {
        None | Some("") => Ok(JobId::generate(Utc::now())),
        Some(k) => JobId::parse(k).map_err(|e| ApiError::bad_request(format!("job_id: {e}"))),
    }
}

pub const LAUNCH: Route = Route {
    function: "launch",
    verb: Verb::Post,
    path: "/api/launch",
    access: Access::Admin,
    features: &["admin", "jobs"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::PageOrJson {
        back: "/admin/create",
        label: "Back to Launch",
    },
    handler: handler!(launch),
};

async fn launch(state: &AppState, req: &Request) -> Reply {
    let form = job_form(req)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let max = state.config.max_vms;
    let n: u32 = form
        .num_vms
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| ApiError::bad_request("num_vms is required"))?
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::bad_request(format!("num_vms must be a whole number from 1 to {max}")))?;
    let overrides = form.overrides()?;
    let id = idempotency_key(&form)?;
    let client = state.db.client().await?;
    let current = fleet::counts(&client).await?.total;
    // A resubmitted form must find its job even when the fleet has grown since.
    let existing = state.jobs().await?.get(&id).await?;
    if existing.is_none() && current + i64::from(n) > i64::from(max) {
        return Err(ApiError::bad_request(format!(
            "the fleet has {current} VM(s) and its limit is {max}: at most {} more",
            (i64::from(max) - current).max(0)
        )));
    }
    let now = Utc::now();
    let ends_at = crate::routes::workshop::fleet_end(
        form.ends_at.as_deref(),
        form.ends_in_hours.as_deref(),
        state.config.fleet_hours,
        now,
    )?;
    let mut job = Job::new(id, JobKind::Launch { num_vms: n }, &admin.user, now);
    job.overrides = overrides;
    let submitted = lablink_ops::submit(state.jobs().await?.as_ref(), job, now).await?;
    if matches!(submitted, Submitted::Created(_)) {
        // A launch never shortens the fleet's life (the admin's "end" form may).
        let end = fleet::set_end(&client, ends_at, &admin.user, true).await?;
        tracing::info!(%end, "the fleet's end time");
    }
    submitted_reply(req, submitted)
}

pub const DESTROY: Route = Route {
    function: "destroy",
    verb: Verb::Post,
    path: "/destroy",
    access: Access::Admin,
    features: &["admin", "jobs"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::PageOrJson {
        back: "/admin/instances/delete",
        label: "Back",
    },
    handler: handler!(destroy),
};

async fn destroy(state: &AppState, req: &Request) -> Reply {
    let form = job_form(req)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let deployment = &state.config.deployment;
    if form.confirm.as_deref().map(str::trim) != Some(deployment.as_str()) {
        return Err(ApiError::bad_request(format!(
            "type the deployment name ({deployment}) in confirm to destroy the fleet"
        )));
    }
    let id = idempotency_key(&form)?;
    submit(state, req, &admin, id, JobKind::Destroy).await
}
