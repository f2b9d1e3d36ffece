//! The admin console: login/logout, the pages, the job routes (launch, destroy, job
//! status), the stored AWS credentials and VM enrollment. Pages redirect to the login
//! page without a session; JSON routes answer 401. Writes need the session's CSRF token
//! (see [`auth::require_admin_write`]).

use chrono::{Duration, Utc};
use lablink_core::credential::Secret;
use lablink_core::db::{exports, fleet, vms};
use lablink_ops::aws::{self as ops_aws, CREDENTIALS_SETTING, StoredCredentials};
use lablink_ops::{Job, JobId, JobKind, Submitted};
use lablink_templates::admin as pages;
use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Admin, SESSION_COOKIE};
use crate::error::{html, json};
use crate::request::{self, SMALL_BODY};
use crate::{ApiError, AppState};

type Reply = Result<Response<Body>, ApiError>;

/// How long an admin session lasts.
pub const SESSION_HOURS: i64 = 8;
/// How long stored AWS credentials are used.
pub const CREDENTIALS_HOURS: i64 = 12;
const LOGIN_CSRF_COOKIE: &str = "lablink_login_csrf";

fn redirect(to: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Empty)
        .expect("static headers are valid")
}

fn secure(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie_header(req: &Request, name: &str, value: &str, path: &str, max_age: i64) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure(req) { "; Secure" } else { "" }
    )
}

/// Whether the caller wants HTML (a browser form) rather than JSON (a script).
fn wants_html(req: &Request) -> bool {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let accept_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    form || accept_html
}

/// A page needs a session: without one, the login page (then back here).
async fn page_session(
    state: &AppState,
    req: &Request,
) -> Result<Result<(Admin, String), Response<Body>>, ApiError> {
    match auth::admin_session(state, req).await {
        Some(a) => {
            let key = &state.admin().await?.session_key;
            let csrf = auth::csrf_token(key, a.session.as_deref().unwrap_or_default());
            Ok(Ok((a, csrf)))
        }
        None => {
            // Surface "no admin configured" as 503 rather than a login loop.
            state.admin().await?;
            let next = req.uri().path();
            Ok(Err(redirect(&format!("/admin/login?next={}", url_encode(next)))))
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only our own admin pages are places to go back to after logging in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/admin") && !n.starts_with("//") && !n.contains("://") && !n.contains('\\') =>
        {
            n.to_owned()
        }
        _ => "/admin".to_owned(),
    }
}

macro_rules! session_or_login {
    ($state:expr, $req:expr) => {
        match page_session($state, $req).await? {
            Ok(s) => s,
            Err(redirect) => return Ok(redirect),
        }
    };
}

// ---- login -----------------------------------------------------------------------

pub async fn login_page(state: &AppState, req: &Request) -> Reply {
    state.admin().await?;
    if auth::admin_session(state, req).await.is_some() {
        return Ok(redirect("/admin"));
    }
    let next = safe_next(request::query::<String>(req, "next")?.as_deref());
    let token = Secret::generate();
    let mut resp = html(StatusCode::OK, pages::login_page(None, token.expose(), &next, ""));
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(req, LOGIN_CSRF_COOKIE, token.expose(), "/admin/login", 3600)
            .parse()
            .expect("hex cookie value"),
    );
    Ok(resp)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

pub async fn login(state: &AppState, req: &Request) -> Reply {
    let form: LoginForm = request::form(req, SMALL_BODY)?;
    let admin = state.admin().await?;
    let next = safe_next(form.next.as_deref());
    let again = |status: StatusCode, msg: &str| {
        let token = Secret::generate();
        let mut resp = html(
            status,
            pages::login_page(Some(msg), token.expose(), &next, &form.user),
        );
        resp.headers_mut().insert(
            header::SET_COOKIE,
            cookie_header(req, LOGIN_CSRF_COOKIE, token.expose(), "/admin/login", 3600)
                .parse()
                .expect("hex cookie value"),
        );
        resp
    };
    let cookie_token = auth::cookie(req, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if form.csrf.is_empty() || !auth::same(cookie_token, &form.csrf) {
        return Ok(again(
            StatusCode::FORBIDDEN,
            "This login form has expired or came from another site. Try again.",
        ));
    }
    if form.user.is_empty() || form.password.is_empty() || form.password.len() > 1024 {
        return Ok(again(StatusCode::BAD_REQUEST, "Enter the user and the password."));
    }
    match auth::check_password(state, req, &form.user, &form.password).await {
        Ok(true) => {}
        Ok(false) => return Ok(again(StatusCode::UNAUTHORIZED, "Wrong user or password.")),
        Err(ApiError::TooManyRequests { retry_after }) => {
            let mut r = again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many failed attempts. Try again in {} minute(s).",
                    retry_after.div_ceil(60)
                ),
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                retry_after.to_string().parse().expect("digits"),
            );
            return Ok(r);
        }
        Err(e) => return Err(e),
    }
    tracing::info!(user = %form.user, "admin logged in");
    let value = auth::issue_session(
        &admin.session_key,
        &admin.user,
        Utc::now() + Duration::hours(SESSION_HOURS),
    );
    let mut resp = redirect(&next);
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie_header(req, SESSION_COOKIE, &value, "/", SESSION_HOURS * 3600)
            .parse()
            .expect("base64url cookie value"),
    );
    h.append(
        header::SET_COOKIE,
        cookie_header(req, LOGIN_CSRF_COOKIE, "", "/admin/login", 0)
            .parse()
            .expect("static cookie"),
    );
    Ok(resp)
}

#[derive(Deserialize, Default)]
struct CsrfForm {
    #[serde(default)]
    csrf: Option<String>,
}

pub async fn logout(state: &AppState, req: &Request) -> Reply {
    let form: CsrfForm = request::form(req, SMALL_BODY).unwrap_or_default();
    auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let mut resp = redirect("/admin/login");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(req, SESSION_COOKIE, "", "/", 0)
            .parse()
            .expect("static cookie"),
    );
    Ok(resp)
}

// ---- pages -----------------------------------------------------------------------

async fn identity_line(state: &AppState, stored: Option<&StoredCredentials>) -> String {
    if let Some(c) = stored {
        return format!(
            "{} (stored by {}, until {})",
            c.identity.arn,
            c.stored_by,
            c.expires_at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    if let Some(local) = &state.local_compute {
        return format!("no AWS: {local}");
    }
    let sdk = state.aws().await;
    match tokio::time::timeout(std::time::Duration::from_secs(5), ops_aws::caller_identity(sdk)).await {
        Ok(Ok(id)) => format!("{} (the provisioner's role)", id.arn),
        Ok(Err(e)) => format!("unknown: {e}"),
        Err(_) => "unknown: AWS STS did not answer within 5 s".into(),
    }
}

async fn render_home(state: &AppState, admin: &Admin, csrf: &str, message: Option<(bool, &str)>) -> Reply {
    let client = state.db.client().await?;
    let c = fleet::counts(&client).await?;
    let store = state.jobs().await;
    let (jobs, stored) = match store {
        Ok(s) => (
            s.recent(10).await?,
            ops_aws::stored(s.as_ref(), Utc::now()).await?,
        ),
        Err(_) => (Vec::new(), None),
    };
    let identity = identity_line(state, stored.as_ref()).await;
    let rows: Vec<pages::JobRow<'_>> = jobs
        .iter()
        .map(|j| pages::JobRow {
            id: j.id.as_str(),
            label: j.kind.label(),
            state: j.state.as_str(),
            requested_by: &j.requested_by,
            created_at: j.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        })
        .collect();
    let counts = [
        ("total", c.total),
        ("running", c.running),
        ("initializing", c.initializing),
        ("error", c.error),
        ("assigned", c.assigned),
        ("in-use", c.in_use),
    ];
    Ok(html(
        StatusCode::OK,
        pages::home_page(&pages::Home {
            session: pages::Session {
                user: &admin.user,
                csrf,
            },
            message,
            counts: &counts,
            free: c.free,
            max_vms: state.config.max_vms,
            identity: &identity,
            stored_credentials: stored.is_some(),
            jobs: &rows,
        }),
    ))
}

pub async fn home(state: &AppState, req: &Request) -> Reply {
    let (admin, csrf) = session_or_login!(state, req);
    render_home(state, &admin, &csrf, None).await
}

pub async fn create(state: &AppState, req: &Request) -> Reply {
    let (admin, csrf) = session_or_login!(state, req);
    let client = state.db.client().await?;
    let current = fleet::counts(&client).await?.total;
    let id = JobId::generate(Utc::now());
    Ok(html(
        StatusCode::OK,
        pages::create_page(&pages::Create {
            session: pages::Session {
                user: &admin.user,
                csrf: &csrf,
            },
            job_id: id.as_str(),
            max_vms: state.config.max_vms,
            current,
            error: None,
        }),
    ))
}

pub async fn instances(state: &AppState, req: &Request) -> Reply {
    let (admin, csrf) = session_or_login!(state, req);
    let client = state.db.client().await?;
    let all = vms::list_vms(&client).await?;
    let rows: Vec<pages::VmRow<'_>> = all
        .iter()
        .map(|v| pages::VmRow {
            hostname: v.hostname.as_str(),
            status: v.status.as_str(),
            reason: v.status_reason.as_deref(),
            healthy: v.healthy.as_deref(),
            in_use: v.in_use,
            email: v.user_email.as_deref(),
            provision_s: v.provision.map(|p| p.seconds()),
            cloud_init_s: v.cloud_init.map(|p| p.seconds()),
            container_s: v.container.map(|p| p.seconds()),
            total_s: v.total_startup_seconds,
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        pages::instances_page(
            &pages::Session {
                user: &admin.user,
                csrf: &csrf,
            },
            &rows,
        ),
    ))
}

pub async fn delete_page(state: &AppState, req: &Request) -> Reply {
    let (admin, csrf) = session_or_login!(state, req);
    let client = state.db.client().await?;
    let total = fleet::counts(&client).await?.total;
    let id = JobId::generate(Utc::now());
    Ok(html(
        StatusCode::OK,
        pages::delete_page(&pages::Delete {
            session: pages::Session {
                user: &admin.user,
                csrf: &csrf,
            },
            job_id: id.as_str(),
            deployment: &state.config.deployment,
            total,
            error: None,
        }),
    ))
}

pub async fn logs_page(state: &AppState, req: &Request) -> Reply {
    let host = request::path_hostname(req)?;
    let (admin, csrf) = session_or_login!(state, req);
    let client = state.db.client().await?;
    let status = vms::get_status(&client, &host)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("unknown VM {host}")))?;
    Ok(html(
        StatusCode::OK,
        pages::logs_page(
            &pages::Session {
                user: &admin.user,
                csrf: &csrf,
            },
            host.as_str(),
            status.as_str(),
        ),
    ))
}

fn path_job_id(req: &Request) -> Result<JobId, ApiError> {
    let raw =
        request::path_param(req, "id").ok_or_else(|| ApiError::bad_request("the path has no job id"))?;
    JobId::parse(&raw).map_err(ApiError::bad_request)
}

pub async fn job_page(state: &AppState, req: &Request) -> Reply {
    let id = path_job_id(req)?;
    let (admin, csrf) = session_or_login!(state, req);
    Ok(html(
        StatusCode::OK,
        pages::job_page(
            &pages::Session {
                user: &admin.user,
                csrf: &csrf,
            },
            id.as_str(),
        ),
    ))
}

// ---- jobs ------------------------------------------------------------------------

pub async fn get_job(state: &AppState, req: &Request) -> Reply {
    let id = path_job_id(req)?;
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
        v["export_vms"] = json!(exports::progress(&client, id.as_str()).await?);
        if let (Some((export_state, deadline)), Some(o)) =
            (exports::state(&client, id.as_str()).await?, v.as_object_mut())
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

fn job_json(job: &Job) -> serde_json::Value {
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
        })
    } else {
        request::form(req, SMALL_BODY)
    }
}

/// A refusal of a job route: a page for a browser, JSON for a script.
fn job_refusal(req: &Request, e: ApiError, back: (&str, &str)) -> Response<Body> {
    if wants_html(req) && e.status().is_client_error() {
        let status = e.status();
        return html(
            status,
            pages::message_page(None, "Not started", &e.to_string(), back),
        );
    }
    e.into_response()
}

async fn submit(state: &AppState, req: &Request, admin: &Admin, id: JobId, kind: JobKind) -> Reply {
    let job = Job::new(id, kind, &admin.user, Utc::now());
    let store = state.jobs().await?;
    let (job, status) = match lablink_ops::submit(store.as_ref(), job, Utc::now()).await? {
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

pub async fn launch(state: &AppState, req: &Request) -> Reply {
    let result = async {
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
            .ok_or_else(|| {
                ApiError::bad_request(format!("num_vms must be a whole number from 1 to {max}"))
            })?;
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
        submit(state, req, &admin, id, JobKind::Launch { num_vms: n }).await
    }
    .await;
    result.or_else(|e| Ok(job_refusal(req, e, ("/admin/create", "Back to Launch"))))
}

pub async fn destroy(state: &AppState, req: &Request) -> Reply {
    let result = async {
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
    .await;
    result.or_else(|e| Ok(job_refusal(req, e, ("/admin/instances/delete", "Back"))))
}

// ---- data export -----------------------------------------------------------------

/// `GET /api/scp-client` (the classic path; the "Export data" button is a GET form to
/// it): start an export job, or lead to the one running. A browser is sent to the job's
/// page; a script gets the job as JSON (202 new, 200 already running), then polls
/// `GET /api/jobs/{id}`. A GET that starts work is guarded: the session cookie is
/// SameSite=Strict, a browser request whose `Sec-Fetch-Site` is not `same-origin` (or
/// `none`: typed in) is refused, and exports run one at a time.
pub async fn scp_client(state: &AppState, req: &Request) -> Reply {
    let result = async {
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
            return Ok(json(status, &job_json(&job)));
        }
        Err(ApiError::Conflict(
            "Another job holds the fleet; try again in a moment.".into(),
        ))
    }
    .await;
    result.or_else(|e| Ok(job_refusal(req, e, ("/admin", "Back to the dashboard"))))
}

/// `GET /api/exports/{id}/download`: the export's zip, for an admin: a redirect to a
/// presigned link valid for 5 minutes (S3), or the file itself (local runner).
pub async fn export_download(state: &AppState, req: &Request) -> Reply {
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
fn is_export_name(name: &str) -> bool {
    name.strip_prefix("lablink_data")
        .and_then(|r| r.strip_suffix(".zip"))
        .is_some_and(|d| d.len() == 14 && d.bytes().all(|b| b.is_ascii_digit()))
}

// ---- AWS credentials -------------------------------------------------------------

#[derive(Deserialize, Default)]
struct CredentialsForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    aws_access_key_id: String,
    #[serde(default)]
    aws_secret_access_key: String,
    #[serde(default)]
    aws_token: Option<String>,
}

async fn credentials_reply(state: &AppState, req: &Request, admin: &Admin, ok: bool, message: &str) -> Reply {
    if wants_html(req)
        && let Some(session) = &admin.session
    {
        let csrf = auth::csrf_token(&state.admin().await?.session_key, session);
        let mut resp = render_home(state, admin, &csrf, Some((ok, message))).await?;
        if !ok {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
        }
        return Ok(resp);
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let key = if ok { "message" } else { "error" };
    Ok(json(status, &json!({ key: message })))
}

pub async fn set_aws_credentials(state: &AppState, req: &Request) -> Reply {
    let form: CredentialsForm = request::form(req, SMALL_BODY)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let id = form.aws_access_key_id.trim();
    let secret = form.aws_secret_access_key.trim();
    let token = form.aws_token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let shape_ok = (16..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && (16..=128).contains(&secret.len())
        && token.is_none_or(|t| t.len() <= 4096);
    if !shape_ok {
        return credentials_reply(
            state,
            req,
            &admin,
            false,
            "An access key id (16–128 letters and digits) and a secret access key are required.",
        )
        .await;
    }
    let sdk = ops_aws::with_credentials(state.aws().await, id, secret, token);
    let identity = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        ops_aws::caller_identity(&sdk),
    )
    .await
    {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            return credentials_reply(
                state,
                req,
                &admin,
                false,
                &format!("AWS refused these credentials: {e}"),
            )
            .await;
        }
        Err(_) => {
            return credentials_reply(
                state,
                req,
                &admin,
                false,
                "AWS STS did not answer within 10 s; nothing was stored.",
            )
            .await;
        }
    };
    let now = Utc::now();
    let stored = StoredCredentials {
        access_key_id: id.to_owned(),
        secret_access_key: secret.to_owned(),
        session_token: token.map(str::to_owned),
        identity: identity.clone(),
        stored_by: admin.user.clone(),
        stored_at: now,
        expires_at: now + Duration::hours(CREDENTIALS_HOURS),
    };
    state
        .jobs()
        .await?
        .put_setting(
            CREDENTIALS_SETTING,
            &serde_json::to_value(&stored).expect("credentials serialize"),
            Some(stored.expires_at),
        )
        .await?;
    tracing::info!(arn = %identity.arn, by = %admin.user, "AWS credentials stored for the provisioner");
    credentials_reply(
        state,
        req,
        &admin,
        true,
        &format!(
            "Credentials of {} stored; launches use them for {CREDENTIALS_HOURS} hours.",
            identity.arn
        ),
    )
    .await
}

pub async fn unset_aws_credentials(state: &AppState, req: &Request) -> Reply {
    let form: CsrfForm = request::form(req, SMALL_BODY).unwrap_or_default();
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    state.jobs().await?.delete_setting(CREDENTIALS_SETTING).await?;
    credentials_reply(
        state,
        req,
        &admin,
        true,
        "Stored credentials removed; launches use the provisioner's role.",
    )
    .await
}

// ---- enrollment ------------------------------------------------------------------

#[derive(Deserialize)]
struct EnrollRequest {
    instance_id: String,
    enrollment_secret: String,
}

/// `POST /api/enroll`: a launched VM's first call. The instance must be one a launch job
/// recorded, the secret that job's, and the VM not enrolled before; the credential is
/// returned this once and only its hash kept.
pub async fn enroll(state: &AppState, req: &Request) -> Reply {
    let body: EnrollRequest = request::json(req, SMALL_BODY)?;
    let id = body.instance_id.trim();
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::bad_request(
            "instance_id must be an instance id like i-0123456789abcdef0",
        ));
    }
    if body.enrollment_secret.is_empty() || body.enrollment_secret.len() > 128 {
        return Err(ApiError::bad_request("enrollment_secret is required"));
    }
    let credential = Secret::generate();
    let client = state.db.client().await?;
    match fleet::enroll(
        &client,
        id,
        &Secret::presented(&body.enrollment_secret),
        &credential.hash(),
    )
    .await?
    {
        fleet::Enrollment::Enrolled(hostname) => {
            tracing::info!(%hostname, instance_id = id, "VM enrolled");
            Ok(json(
                StatusCode::OK,
                &json!({ "hostname": hostname, "credential": credential.expose() }),
            ))
        }
        fleet::Enrollment::UnknownInstance => Err(ApiError::NotFound(format!(
            "instance {id} is not (yet) a VM of this deployment"
        ))),
        fleet::Enrollment::AlreadyEnrolled => {
            Err(ApiError::Conflict(format!("instance {id} has enrolled already")))
        }
        fleet::Enrollment::BadSecret => Err(ApiError::Refused(
            "the enrollment secret is not this instance's launch job's, or it expired".into(),
        )),
    }
}
