//! The participant's routes: the form, the request for a VM (or a fresh code for the
//! VM this email holds), the seat's live page by its token, the live free count, and
//! the health check. They reach Postgres only: no admin auth, no AWS client.

use lablink_core::domain::{CrdCommand, Email, Hostname, Pin};
use lablink_core::workshop::Refusal;
use lablink_db::seats::{self, CodeChange, CodeLimits, Proof};
use lablink_db::{vms, workshop};
use lablink_templates as pages;
use lambda_http::Request;
use lambda_http::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::request::{self, SMALL_BODY};
use crate::respond::{html, json};
use crate::{ApiError, AppState};

pub const INDEX: Route = Route {
    function: "index",
    verb: Verb::Get,
    path: "/",
    access: Access::Participant,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(index),
};

async fn index(state: &AppState, _req: &Request) -> Reply {
    let client = state.db.client().await?;
    let free = vms::free_seat_count(&client).await?;
    let gate = workshop::gate(&client, &state.config.gate).await?;
    Ok(html(
        StatusCode::OK,
        pages::participant_page(&pages::ParticipantPage {
            free_vms: free,
            email: "",
            crd_command: "",
            error: None,
            ask_code: gate.wants_code(),
        }),
    ))
}

pub const REQUEST_VM: Route = Route {
    function: "request-vm",
    verb: Verb::Post,
    path: "/api/request_vm",
    access: Access::Participant,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(request_vm),
};

#[derive(Deserialize)]
struct VmRequestForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    crd_command: String,
    /// The workshop's access code, when the admin set one (an additive field: classic
    /// forms have only the two above). Present, even empty, when the form showed it.
    #[serde(default)]
    access_code: Option<String>,
}

/// `POST /api/request_vm` (form). Bad input re-renders the form with the reason, keeping
/// what was typed (400); no free VM re-renders it with "no VMs available" (200, not an
/// error page); success shows the seat's live page (hostname, PIN, the state of the
/// registration, the link to come back). An email that holds a VM already gets that VM
/// back, and a NEW code is sent to it as a fresh code (within the seat's limits: 429
/// past them). The workshop's gate comes first: a wrong access code or an email off the
/// participant list is 403, and an address past its limit of new seats 429 with
/// `Retry-After`. No seat or code is written on any refusal.
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
                // A form that comes back asks for the code whenever the form it came
                // from did, or the deployment requires one (the gate is read below).
                ask_code: form.access_code.is_some() || state.config.gate.wants_code(),
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
    let gate = workshop::gate(&client, &state.config.gate).await?;
    let ask_again = |status: StatusCode, error: &str, free: i64| {
        html(
            status,
            pages::participant_page(&pages::ParticipantPage {
                free_vms: free,
                email: &form.email,
                crd_command: &form.crd_command,
                error: Some(error),
                ask_code: gate.wants_code(),
            }),
        )
    };
    let typed_code = form.access_code.as_deref().unwrap_or("");
    if let Err(refusal) = gate.admits(typed_code, &email) {
        let why = match refusal {
            Refusal::AccessCode if typed_code.trim().is_empty() => {
                "This workshop needs its access code: type the code the staff gave you."
            }
            Refusal::AccessCode => "That is not this workshop's access code. Check it with the staff.",
            Refusal::NotListed => {
                "This email is not on this workshop's participant list. Use the email you registered with, or ask the staff."
            }
        };
        tracing::info!(?refusal, "request refused by the workshop's gate");
        return Ok(ask_again(
            StatusCode::FORBIDDEN,
            why,
            free_count_or_zero(state).await,
        ));
    }
    // Counted before assigning (atomically), given back below unless a new seat came of
    // it, so the limit is on new seats: the same email asking again always reaches its
    // own seat.
    let address = crate::auth::client_ip(req);
    let now = chrono::Utc::now();
    let window = chrono::Duration::minutes(i64::from(gate.window_minutes));
    if let Some(until) =
        workshop::reserve_seat(&client, &address, gate.seats_per_address, window, now).await?
        && !vms::holds_seat(&client, &email).await?
    {
        workshop::give_back_seat(&client, &address).await?;
        let wait = (until - now).num_seconds().max(1);
        tracing::warn!(address, "new-seat limit reached for an address");
        let mut resp = ask_again(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many VMs were requested from your network just now. Try again in {} minute(s), or ask the staff.",
                (wait as u64).div_ceil(60)
            ),
            free_count_or_zero(state).await,
        );
        resp.headers_mut().insert(
            lambda_http::http::header::RETRY_AFTER,
            wait.to_string().parse().expect("digits"),
        );
        return Ok(resp);
    }
    let assigned = vms::assign(&client, &email, &command, &Pin::generate()).await?;
    if !assigned.as_ref().is_some_and(|a| a.fresh) {
        workshop::give_back_seat(&client, &address).await?;
    }
    match assigned {
        Some(a) if a.fresh || a.same_command => {
            tracing::info!(hostname = %a.hostname, fresh = a.fresh, "VM assigned");
            let token = seats::issue_token(&client, &a.hostname, &email).await?;
            let notice = (!a.fresh).then_some("This email already has this VM: here it is again.");
            // Just assigned: its code is on its way. The same request again: as it stands.
            let state_name = if a.fresh {
                seats::SeatState::Connecting.as_str()
            } else {
                seats::view(&client, token.expose(), CodeLimits::default())
                    .await?
                    .map_or("connecting", |v| v.state.as_str())
            };
            Ok(html(
                StatusCode::OK,
                pages::seat_page(&pages::SeatPage {
                    token: token.expose(),
                    hostname: a.hostname.as_str(),
                    pin: Some(a.pin.as_str()),
                    state: state_name,
                    notice,
                    error: None,
                    crd_command: "",
                    fleet_ends_at: None,
                }),
            ))
        }
        Some(a) => {
            // The same person with a new code (the last one expired or was mistyped):
            // it goes to their VM, unless the desktop is connected (the email alone may
            // not move it to another Google account; the seat's page may).
            let change = seats::send_code(
                &client,
                &a.hostname,
                email.as_str(),
                &command,
                &Pin::generate(),
                CodeLimits::default(),
                Proof::Email,
            )
            .await?;
            match refusal_of(&change) {
                Some((status, why)) => Ok(ask_again(status, &why, free_count_or_zero(state).await)),
                None => {
                    tracing::info!(hostname = %a.hostname, "fresh code sent to the participant's VM");
                    let token = seats::issue_token(&client, &a.hostname, &email).await?;
                    let pin = match &change {
                        CodeChange::Sent { pin } | CodeChange::Unchanged { pin } => pin.as_str(),
                        _ => a.pin.as_str(),
                    };
                    Ok(html(
                        StatusCode::OK,
                        pages::seat_page(&pages::SeatPage {
                            token: token.expose(),
                            hostname: a.hostname.as_str(),
                            pin: Some(pin),
                            state: "connecting",
                            notice: Some(
                                "This email already has this VM: your new code was sent to it, with a new PIN. It registers the desktop again.",
                            ),
                            error: None,
                            crd_command: "",
                            fleet_ends_at: None,
                        }),
                    ))
                }
            }
        }
        None => Ok(ask_again(
            StatusCode::OK,
            "No VMs available right now. Keep this page open: the count above updates; try again when it is above 0.",
            0,
        )),
    }
}

/// The status and message of a fresh code that was not sent; `None` when it was (or
/// the seat had exactly that code already).
fn refusal_of(change: &CodeChange) -> Option<(StatusCode, String)> {
    match change {
        CodeChange::Sent { .. } | CodeChange::Unchanged { .. } => None,
        CodeChange::TooSoon { wait_seconds } => Some((
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "A code was sent to your VM moments ago; wait {wait_seconds} s before sending another (it may still be registering: check your seat's page)."
            ),
        )),
        CodeChange::TooMany { max } => Some((
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Your VM has already taken {max} new codes, the most one seat may. Ask the workshop staff for help."
            ),
        )),
        CodeChange::Connected => Some((
            StatusCode::CONFLICT,
            "Your VM is already connected with an earlier code. To register it with another Google account, use the form on your seat's page (the link on the page you got when you asked for your VM), or ask the workshop staff.".into(),
        )),
        CodeChange::Resetting => Some((
            StatusCode::CONFLICT,
            "Your VM is being reset by the workshop staff; no code can reach it now.".into(),
        )),
        CodeChange::NotYours => Some((
            StatusCode::CONFLICT,
            "This seat is no longer yours (the staff released or moved it). Use the start page to get a VM."
                .into(),
        )),
    }
}

/// A seat token from the path (the seat routes share the `/…/{token}` position): 64
/// hex digits, else the seat is simply not found (a malformed token is as unknown as a
/// wrong one).
fn path_token(req: &Request) -> Result<String, ApiError> {
    let pattern = if req.uri().path().starts_with("/api/") {
        SEAT_STATUS.path
    } else {
        SEAT_PAGE.path
    };
    request::path_param_in(req, pattern, "token")
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|t| t.to_ascii_lowercase())
        .ok_or_else(no_such_seat)
}

fn no_such_seat() -> ApiError {
    ApiError::NotFound("no seat has this link; check it, or use the start page".into())
}

pub const SEAT_PAGE: Route = Route {
    function: "seat-page",
    verb: Verb::Get,
    path: "/seat/{token}",
    access: Access::Participant,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(seat_page),
};

/// `GET /seat/{token}`: the seat's live page (404, as a page, for a token never issued).
async fn seat_page(state: &AppState, req: &Request) -> Reply {
    let missing = || html(StatusCode::NOT_FOUND, pages::seat_missing_page());
    let Ok(token) = path_token(req) else {
        return Ok(missing());
    };
    let client = state.db.client().await?;
    let Some(view) = seats::view(&client, &token, CodeLimits::default()).await? else {
        return Ok(missing());
    };
    let ends = announced(state, view.fleet_ends_at).map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    Ok(html(
        StatusCode::OK,
        pages::seat_page(&pages::SeatPage {
            token: &token,
            hostname: &view.hostname,
            pin: view.pin.as_deref(),
            state: view.state.as_str(),
            notice: None,
            error: None,
            crd_command: "",
            fleet_ends_at: ends.as_deref(),
        }),
    ))
}

pub const SEAT_STATUS: Route = Route {
    function: "seat-status",
    verb: Verb::Get,
    path: "/api/seat/{token}",
    access: Access::Participant,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(seat_status),
};

/// `GET /api/seat/{token}`: `{"state","hostname","pin","vm_status","codes_left"}` for the
/// page's script (404 for a token never issued). Only this seat's own facts.
async fn seat_status(state: &AppState, req: &Request) -> Reply {
    let token = path_token(req)?;
    let client = state.db.client().await?;
    let mut view = seats::view(&client, &token, CodeLimits::default())
        .await?
        .ok_or_else(no_such_seat)?;
    view.fleet_ends_at = announced(state, view.fleet_ends_at);
    Ok(json(StatusCode::OK, &view))
}

/// The fleet's end, once it is within the notice before it (`LABLINK_FLEET_NOTICE_SECONDS`):
/// the participant's pages announce it then, so work can be saved.
fn announced(
    state: &AppState,
    ends_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    ends_at.filter(|t| *t - chrono::Utc::now() <= state.config.fleet_notice)
}

pub const SEAT_CODE: Route = Route {
    function: "seat-code",
    verb: Verb::Post,
    path: "/api/seat/{token}/code",
    access: Access::Participant,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(seat_code),
};

#[derive(Deserialize)]
struct SeatCodeForm {
    #[serde(default)]
    crd_command: String,
}

/// `POST /api/seat/{token}/code` (form `crd_command`): a fresh code for this seat's VM.
/// Sent: 303 to the seat's page (which shows it connecting). A bad command (400), the
/// seat's limits (429) or an ended seat (409) re-render the page with the reason;
/// nothing changes then. An unknown token is 404.
async fn seat_code(state: &AppState, req: &Request) -> Reply {
    let token = path_token(req)?;
    let form: SeatCodeForm = request::form(req, SMALL_BODY)?;
    let client = state.db.client().await?;
    let view = seats::view(&client, &token, CodeLimits::default())
        .await?
        .ok_or_else(no_such_seat)?;
    let page_again = |status: StatusCode, error: &str| {
        html(
            status,
            pages::seat_page(&pages::SeatPage {
                token: &token,
                hostname: &view.hostname,
                pin: view.pin.as_deref(),
                state: view.state.as_str(),
                notice: None,
                error: Some(error),
                crd_command: &form.crd_command,
                fleet_ends_at: None,
            }),
        )
    };
    let command = match CrdCommand::parse(&form.crd_command) {
        Ok(c) => c,
        Err(e) => {
            return Ok(page_again(
                StatusCode::BAD_REQUEST,
                &format!("Chrome Remote Desktop command: {e}."),
            ));
        }
    };
    let Some(email) = view.email.as_deref() else {
        return Ok(page_again(
            StatusCode::CONFLICT,
            "This seat is no longer yours (the staff released or moved it). Use the start page to get a VM.",
        ));
    };
    // Stored from a checked hostname: a failure here is a corrupt row.
    let hostname = Hostname::parse(&view.hostname)
        .map_err(|e| ApiError::Db(lablink_db::DbError::Corrupt(format!("seat hostname: {e}"))))?;
    let change = seats::send_code(
        &client,
        &hostname,
        email,
        &command,
        &Pin::generate(),
        CodeLimits::default(),
        Proof::SeatToken,
    )
    .await?;
    if let Some((status, why)) = refusal_of(&change) {
        return Ok(page_again(status, &why));
    }
    tracing::info!(%hostname, "fresh code sent from the seat page");
    Ok(crate::respond::redirect(&format!("/seat/{token}")))
}

/// The form shown again with an error carries the live count too; if even that read
/// fails, 0 is shown rather than hiding the participant's own mistake behind an outage.
async fn free_count_or_zero(state: &AppState) -> i64 {
    match state.db.client().await {
        Ok(c) => vms::free_seat_count(&c).await.unwrap_or(0),
        Err(_) => 0,
    }
}

pub const UNASSIGNED_VMS_COUNT: Route = Route {
    function: "unassigned-vms-count",
    verb: Verb::Get,
    path: "/api/unassigned_vms_count",
    access: Access::Participant,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(unassigned_vms_count),
};

async fn unassigned_vms_count(state: &AppState, _req: &Request) -> Reply {
    let client = state.db.client().await?;
    Ok(json(
        StatusCode::OK,
        &json!({ "count": vms::free_seat_count(&client).await? }),
    ))
}

pub const HEALTH: Route = Route {
    function: "health",
    verb: Verb::Get,
    path: "/api/health",
    access: Access::Public,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(health),
};

/// `GET /api/health`: database reachable, schema version.
async fn health(state: &AppState, _req: &Request) -> Reply {
    let client = state.db.client().await.map_err(|e| {
        // The detail (host names, roles, driver text) is for the logs, not for anyone.
        tracing::error!(error = %e, "health: database unreachable");
        ApiError::Unavailable("database unreachable".into())
    })?;
    let version = lablink_db::schema_version(&client).await?;
    let expected = lablink_db::latest_known_version();
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
