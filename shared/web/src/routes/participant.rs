//! The participant's routes: the form, the request for a VM, the live free count, and
//! the health check. They reach Postgres only: no admin auth, no AWS client.

use lablink_core::domain::{CrdCommand, Email, Pin};
use lablink_db::vms;
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
    let client = state
        .db
        .client()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database unreachable: {e}")))?;
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
