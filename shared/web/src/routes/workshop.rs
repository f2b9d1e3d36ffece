//! The admin's workshop settings: who may take a seat (the workshop's access code, its
//! participant list and the limit of new seats per address; rules:
//! `lablink_core::workshop`; the request route applies them), and when the fleet is
//! destroyed (`lablink_provision::schedule` does it). A form from the dashboard or JSON
//! from a script.

use chrono::{DateTime, Duration, Utc};
use lablink_core::workshop::{Gate, ParticipantList, parse_access_code};
use lablink_db::{fleet, workshop};
use lambda_http::Request;
use lambda_http::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::auth;
use crate::request::{self, wants_html};
use crate::respond::{json, redirect};
use crate::{ApiError, AppState};

/// A participant list of 10,000 long emails, pasted.
const WORKSHOP_BODY: usize = 1024 * 1024;

pub const WORKSHOP: Route = Route {
    function: "admin-workshop",
    verb: Verb::Post,
    path: "/api/admin/workshop",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::PageOrJson {
        back: "/admin#workshop",
        label: "Back to the dashboard",
    },
    handler: handler!(set_workshop),
};

/// The form's fields (JSON: the same names; `participants` may be a list, numbers
/// may be numbers: [`request::form_or_json`]).
#[derive(Deserialize, Default)]
struct WorkshopForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    access_code: Option<String>,
    #[serde(default)]
    participants: Option<String>,
    #[serde(default)]
    seats_per_address: Option<String>,
    #[serde(default)]
    window_minutes: Option<String>,
    /// `save` (default) or `defaults` (forget the dashboard's settings).
    #[serde(default)]
    action: Option<String>,
}

fn number(v: Option<&str>, name: &str, default: u32, min: u32, max: u32) -> Result<u32, ApiError> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a number from {min} to {max}"))),
    }
}

/// `POST /api/admin/workshop`: save the gate (it replaces the deployment's defaults), or
/// go back to the defaults (`action=defaults`). Every field is checked before anything
/// is written; a browser goes back to the dashboard, a script gets the gate as JSON
/// (the access code is not echoed).
async fn set_workshop(state: &AppState, req: &Request) -> Reply {
    let form: WorkshopForm = request::form_or_json(req, WORKSHOP_BODY)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let client = state.db.client().await?;
    let gate = match form.action.as_deref().unwrap_or("save") {
        "defaults" => {
            workshop::reset_gate(&client).await?;
            tracing::info!(admin = %admin.user, "workshop gate back to the deployment's defaults");
            state.config.gate.clone()
        }
        "save" => {
            let access_code = parse_access_code(form.access_code.as_deref().unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("access_code: {e}")))?;
            let participants = ParticipantList::parse(form.participants.as_deref().unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("participants: {e}")))?;
            let gate = Gate {
                access_code,
                participants: (!participants.is_empty()).then_some(participants),
                seats_per_address: number(
                    form.seats_per_address.as_deref(),
                    "seats_per_address",
                    state.config.gate.seats_per_address,
                    1,
                    100_000,
                )?,
                window_minutes: number(
                    form.window_minutes.as_deref(),
                    "window_minutes",
                    state.config.gate.window_minutes,
                    1,
                    1440,
                )?,
            };
            workshop::save_gate(&client, &gate, &admin.user).await?;
            tracing::info!(admin = %admin.user, ?gate, "workshop gate saved");
            gate
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "action must be save or defaults, got {other:?}"
            )));
        }
    };
    if wants_html(req) {
        return Ok(redirect("/admin#workshop"));
    }
    Ok(json(
        StatusCode::OK,
        &json!({
            "access_code_required": gate.access_code.is_some(),
            "participants": gate.participants.as_ref().map(|p| p.entries().to_vec()),
            "seats_per_address": gate.seats_per_address,
            "window_minutes": gate.window_minutes,
        }),
    ))
}

/// The longest a fleet may be scheduled ahead.
pub const MAX_FLEET_HOURS: u32 = 168;

/// When the fleet ends: `ends_at` (RFC 3339, in the future, at most a week ahead), or
/// `ends_in_hours` from now (1..168), or `default_hours` from now.
pub fn fleet_end(
    ends_at: Option<&str>,
    ends_in_hours: Option<&str>,
    default_hours: u32,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    let latest = now + Duration::hours(i64::from(MAX_FLEET_HOURS));
    if let Some(t) = ends_at.map(str::trim).filter(|t| !t.is_empty()) {
        let t = DateTime::parse_from_rfc3339(t)
            .map_err(|_| ApiError::bad_request("ends_at must be a time like 2026-12-02T18:00:00Z"))?
            .with_timezone(&Utc);
        if t <= now || t > latest {
            return Err(ApiError::bad_request(format!(
                "ends_at must be in the future and at most {MAX_FLEET_HOURS} hours ahead"
            )));
        }
        return Ok(t);
    }
    let hours = number(ends_in_hours, "ends_in_hours", default_hours, 1, MAX_FLEET_HOURS)?;
    Ok(now + Duration::hours(i64::from(hours)))
}

pub const FLEET_END: Route = Route {
    function: "admin-fleet-end",
    verb: Verb::Post,
    path: "/api/admin/fleet-end",
    access: Access::Admin,
    features: &["admin"],
    reaches: Reaches::DB,
    on_error: OnError::PageOrJson {
        back: "/admin#fleet-end",
        label: "Back to the dashboard",
    },
    handler: handler!(set_fleet_end),
};

#[derive(Deserialize, Default)]
struct FleetEndForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    ends_in_hours: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
}

/// `POST /api/admin/fleet-end` (`ends_in_hours` or `ends_at`): when the running fleet
/// is destroyed, as given (to extend it, or to end it sooner). 409 without a fleet.
/// A browser goes back to the dashboard; a script gets `{"ends_at"}`.
async fn set_fleet_end(state: &AppState, req: &Request) -> Reply {
    let form: FleetEndForm = request::form_or_json(req, request::SMALL_BODY)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    if form.ends_at.as_deref().is_none_or(|v| v.trim().is_empty())
        && form.ends_in_hours.as_deref().is_none_or(|v| v.trim().is_empty())
    {
        return Err(ApiError::bad_request("give ends_in_hours (1 to 168) or ends_at"));
    }
    let now = Utc::now();
    let ends_at = fleet_end(
        form.ends_at.as_deref(),
        form.ends_in_hours.as_deref(),
        state.config.fleet_hours,
        now,
    )?;
    let client = state.db.client().await?;
    if fleet::counts(&client).await?.total == 0 {
        return Err(ApiError::Conflict(
            "there is no fleet to schedule: launch VMs first".into(),
        ));
    }
    let end = fleet::set_end(&client, ends_at, &admin.user, false).await?;
    tracing::info!(admin = %admin.user, %end, "the fleet's end time set");
    if wants_html(req) {
        return Ok(redirect("/admin#fleet-end"));
    }
    Ok(json(StatusCode::OK, &json!({ "ends_at": end })))
}
