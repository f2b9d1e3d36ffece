//! The admin console's pages and its login: login page, login, logout, the dashboard,
//! launch and destroy forms, the instances list, a VM's logs and a job's page. Pages
//! redirect to the login page without a session. Writes need the session's CSRF token
//! (see [`auth::require_admin_write`]).

use chrono::{Duration, Utc};
use lablink_core::credential::Secret;
use lablink_core::domain::JobId;
use lablink_db::admin as admin_db;
use lablink_db::{fleet, vms};
#[cfg(feature = "aws-credentials")]
use lablink_ops::aws::{self as ops_aws, StoredCredentials};
use lablink_templates::admin as pages;
use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::auth::{self, Admin, SESSION_COOKIE, SESSION_HOURS, cookie_header};
use crate::request::{self, SMALL_BODY};
use crate::respond::{html, redirect};
use crate::{ApiError, AppState};

const LOGIN_CSRF_COOKIE: &str = "lablink_login_csrf";

/// A page needs a session: without one, the login page (then back here).
async fn page_session(
    state: &AppState,
    req: &Request,
) -> Result<Result<(Admin, String), Response<Body>>, ApiError> {
    auth::admin_network(state, req)?;
    match auth::admin_session(state, req).await? {
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

/// Only our own admin pages are places to go back to after logging in, spelled in
/// visible ASCII only (a control character would not even make a valid `Location`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/admin")
                && !n.starts_with("//")
                && !n.contains("://")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
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

pub const LOGIN_PAGE: Route = Route {
    function: "admin-login-page",
    verb: Verb::Get,
    path: "/admin/login",
    access: Access::Public,
    features: &["admin"],
    // It asks the database nothing, but every function's settings include one (a
    // function without them would not start: `AppConfig::read`).
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(login_page),
};

/// The login form, always (also to a browser with a session cookie: this function
/// reaches no database, so it cannot tell a live session from an ended one, and a
/// redirect to the dashboard could loop with the dashboard's redirect here).
async fn login_page(state: &AppState, req: &Request) -> Reply {
    auth::admin_network(state, req)?;
    state.admin().await?;
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

pub const LOGIN: Route = Route {
    function: "admin-login",
    verb: Verb::Post,
    path: "/admin/login",
    access: Access::Public,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(login),
};

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

async fn login(state: &AppState, req: &Request) -> Reply {
    auth::admin_network(state, req)?;
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
    // A server-side record per session, so a logout (or "log out everywhere", or a new
    // password) ends it at once.
    let now = Utc::now();
    let expires = now + Duration::hours(SESSION_HOURS);
    let session_id = Secret::generate();
    let client = state.db.client().await?;
    admin_db::create_session(
        &client,
        &auth::session_hash(session_id.expose()),
        &admin.user,
        &admin.epoch(),
        &auth::client_ip(req),
        expires,
    )
    .await?;
    let value = auth::issue_session(&admin.session_key, &admin.user, session_id.expose(), expires);
    // This browser is now one the admin uses: its failed logins count against it, not
    // against the admin user.
    let device = auth::issue_device(
        &admin.session_key,
        &admin.user,
        now + Duration::days(auth::DEVICE_DAYS),
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
        cookie_header(
            req,
            auth::DEVICE_COOKIE,
            &device,
            "/admin/login",
            auth::DEVICE_DAYS * 86_400,
        )
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

pub const LOGOUT: Route = Route {
    function: "admin-logout",
    verb: Verb::Post,
    path: "/admin/logout",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(logout),
};

/// The logout form: its CSRF token, and `everywhere` to end every session of the admin
/// (other browsers, a stolen cookie) rather than this one.
#[derive(Deserialize, Default)]
struct LogoutForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    everywhere: Option<String>,
}

async fn logout(state: &AppState, req: &Request) -> Reply {
    let form: LogoutForm = request::form(req, SMALL_BODY).unwrap_or_default();
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let client = state.db.client().await?;
    if form
        .everywhere
        .is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
    {
        let ended = admin_db::end_all_sessions(&client, &admin.user).await?;
        tracing::info!(user = %admin.user, ended, "admin logged out everywhere");
    } else if let Some((_, id)) = {
        let key = &state.admin().await?.session_key;
        admin
            .session
            .as_deref()
            .and_then(|v| auth::verify_session(key, v, Utc::now()))
    } {
        admin_db::end_session(&client, &auth::session_hash(&id)).await?;
    }
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

#[cfg(feature = "aws-credentials")]
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

#[cfg(feature = "aws-credentials")]
pub(crate) async fn render_home(
    state: &AppState,
    admin: &Admin,
    csrf: &str,
    message: Option<(bool, &str)>,
) -> Reply {
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
    let stored_gate = lablink_db::workshop::stored_gate(&client).await?;
    let from_dashboard = stored_gate.is_some();
    let gate = stored_gate.unwrap_or_else(|| state.config.gate.clone());
    let participants = gate
        .participants
        .as_ref()
        .map(|p| p.to_text())
        .unwrap_or_default();
    let auth_now = state.admin().await?;
    let live_sessions = admin_db::live_sessions(&client, &admin.user, &auth_now.epoch()).await?;
    let fleet_end = fleet::end(&client).await?;
    let fleet_end_minutes = fleet_end.as_ref().map(|(t, _)| (*t - Utc::now()).num_minutes());
    let fleet_end = fleet_end.map(|(t, by)| (t.format("%Y-%m-%d %H:%M").to_string(), by));
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
            workshop: pages::Workshop {
                access_code: gate.access_code.as_deref(),
                participants: &participants,
                participant_count: gate.participants.as_ref().map_or(0, |p| p.len()),
                seats_per_address: gate.seats_per_address,
                window_minutes: gate.window_minutes,
                from_dashboard,
            },
            live_sessions,
            fleet_end,
            fleet_end_minutes,
        }),
    ))
}

#[cfg(feature = "aws-credentials")]
pub const HOME: Route = Route {
    function: "admin-home",
    verb: Verb::Get,
    path: "/admin",
    access: Access::Admin,
    features: &["admin", "jobs", "aws-credentials"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::Json,
    handler: handler!(home),
};

#[cfg(feature = "aws-credentials")]
async fn home(state: &AppState, req: &Request) -> Reply {
    let (admin, csrf) = session_or_login!(state, req);
    render_home(state, &admin, &csrf, None).await
}

/// The deployment's VM settings as the launch form lists them.
fn vm_defaults(vm: &lablink_core::vm_settings::VmSettings) -> Vec<(&'static str, String)> {
    let none = || "none".to_owned();
    vec![
        ("Instance type", vm.instance_type.clone()),
        ("Client image", vm.client_image.clone()),
        (
            "Tutorial repository",
            vm.tutorial_repo.clone().unwrap_or_else(none),
        ),
        (
            "Subject software",
            vm.subject_software.clone().unwrap_or_else(none),
        ),
        (
            "Startup script",
            vm.startup_script.as_ref().map_or_else(none, |s| {
                format!("{} bytes, on error: {}", s.len(), vm.startup_on_error.as_str())
            }),
        ),
        ("Desktop user", vm.desktop_user.clone()),
        ("Disk", format!("{} GB", vm.disk_gb)),
    ]
}

pub const CREATE: Route = Route {
    function: "admin-create",
    verb: Verb::Get,
    path: "/admin/create",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(create),
};

async fn create(state: &AppState, req: &Request) -> Reply {
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
            defaults: &vm_defaults(&state.config.vm),
            instance_type: &state.config.vm.instance_type,
            client_image: &state.config.vm.client_image,
            tutorial_repo: state.config.vm.tutorial_repo.as_deref().unwrap_or("none"),
            fleet_hours: state.config.fleet_hours,
        }),
    ))
}

pub const INSTANCES: Route = Route {
    function: "admin-instances",
    verb: Verb::Get,
    path: "/admin/instances",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(instances),
};

async fn instances(state: &AppState, req: &Request) -> Reply {
    let (admin, csrf) = session_or_login!(state, req);
    let client = state.db.client().await?;
    let all = vms::list_vms(&client).await?;
    let actions = lablink_db::seats::recent_actions(&client, 3).await?;
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
            image_pull_s: v.image_pull.map(|p| p.seconds()),
            container_s: v.container.map(|p| p.seconds()),
            tutorial_clone_s: v.tutorial_clone.map(|p| p.seconds()),
            startup_script_s: v.startup_script.map(|p| p.seconds()),
            total_s: v.total_startup_seconds,
            start_host: v
                .start_host
                .as_ref()
                .map(|r| (r.ok, r.exit_code, r.output.as_str())),
            initializing_min: (v.status == lablink_core::domain::VmStatus::Initializing)
                .then(|| (chrono::Utc::now() - v.created_at).num_minutes().max(0)),
            seat: v.user_email.as_ref().map(|_| seat_label(v)),
            code_changes: v.code_changes,
            reset_pending: v.reset_pending,
            actions: actions
                .iter()
                .filter(|a| a.hostname == v.hostname.as_str())
                .map(|a| {
                    (
                        a.action.as_str(),
                        a.actor.as_str(),
                        a.detail.as_str(),
                        a.at.format("%Y-%m-%d %H:%M UTC").to_string(),
                    )
                })
                .collect(),
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

/// Where an assigned VM's seat stands (docs/operations.md, "A seat's life").
fn seat_label(v: &vms::Vm) -> &'static str {
    if v.assigned_at.is_none() {
        // Reassigned: the new participant has not sent a code yet.
        return "waiting for the participant's code";
    }
    match (v.acknowledged_at, &v.start_host, v.delivered_at) {
        (Some(_), Some(r), _) if r.ok => "connected",
        (Some(_), Some(_), _) => "code refused: waiting for a new one",
        (Some(_), None, _) => "outcome reported",
        (None, _, Some(_)) => "code delivered: start-host running",
        (None, _, None) => "code on its way",
    }
}

pub const DELETE: Route = Route {
    function: "admin-delete",
    verb: Verb::Get,
    path: "/admin/instances/delete",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(delete_page),
};

async fn delete_page(state: &AppState, req: &Request) -> Reply {
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
            deployment: state.config.deployment.as_str(),
            total,
            error: None,
        }),
    ))
}

pub const LOGS: Route = Route {
    function: "admin-logs",
    verb: Verb::Get,
    path: "/admin/logs/{hostname}",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(logs_page),
};

async fn logs_page(state: &AppState, req: &Request) -> Reply {
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

pub const JOB: Route = Route {
    function: "admin-job",
    verb: Verb::Get,
    path: "/admin/jobs/{id}",
    access: Access::Admin,
    features: &["admin"],
    // The page's script reads the job through `GET /api/jobs/{id}`: this function
    // reaches no jobs table (it holds stored AWS keys), only the database, where the
    // admin's session record is checked.
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(job_page),
};

async fn job_page(state: &AppState, req: &Request) -> Reply {
    let id = request::path_job_id(req)?;
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
