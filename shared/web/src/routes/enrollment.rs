//! `POST /api/enroll`: a launched VM trades its launch job's enrollment secret for its
//! own credential (again, if the answer was lost, until the VM reports in). Postgres
//! only.

use lablink_core::credential::Secret;
use lablink_core::domain::InstanceId;
use lablink_db::fleet;
use lablink_wire as wire;
use lambda_http::Request;
use lambda_http::http::StatusCode;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::request::{self, SMALL_BODY};
use crate::respond::json;
use crate::{ApiError, AppState};

pub const ENROLL: Route = Route {
    function: "enroll",
    verb: Verb::Post,
    path: "/api/enroll",
    access: Access::Vm,
    features: &[],
    reaches: Reaches::DB,
    on_error: OnError::Json,
    handler: handler!(enroll),
};

/// `POST /api/enroll`: a launched VM's first call. The instance must be one a launch job
/// recorded, the secret that job's (and unexpired), and the VM not yet reported in (a
/// repeat replaces the earlier credential: see `fleet::enroll`); the credential is
/// returned this once and only its hash kept.
async fn enroll(state: &AppState, req: &Request) -> Reply {
    let body: wire::EnrollRequest = request::json(req, SMALL_BODY)?;
    let id = InstanceId::parse(&body.instance_id).map_err(ApiError::bad_request)?;
    if body.enrollment_secret.is_empty() || body.enrollment_secret.len() > 128 {
        return Err(ApiError::bad_request("enrollment_secret is required"));
    }
    if let Some(why) = &body.bootstrap_failure {
        return bootstrap_failed(state, &id, &body.enrollment_secret, why).await;
    }
    let credential = Secret::generate();
    let client = state.db.client().await?;
    match fleet::enroll(
        &client,
        &id,
        &Secret::presented(&body.enrollment_secret),
        &credential.hash(),
    )
    .await?
    {
        fleet::Enrollment::Enrolled(hostname) => {
            tracing::info!(%hostname, instance_id = %id, "VM enrolled");
            Ok(json(
                StatusCode::OK,
                &wire::Enrollment {
                    hostname: hostname.to_string(),
                    credential: credential.expose().to_owned(),
                },
            ))
        }
        fleet::Enrollment::UnknownInstance => Err(ApiError::NotFound(format!(
            "instance {id} is not (yet) a VM of this deployment"
        ))),
        fleet::Enrollment::AlreadyEnrolled => Err(ApiError::Conflict(format!(
            "instance {id} has enrolled already and reported in with its credential"
        ))),
        fleet::Enrollment::BadSecret => Err(ApiError::Refused(
            "the enrollment secret is not this instance's launch job's, or it expired".into(),
        )),
    }
}

/// The longest bootstrap failure kept (the end of what the bootstrap said).
const MAX_BOOTSTRAP_FAILURE: usize = 500;

/// `POST /api/enroll` with `bootstrap_failure`: the VM's bootstrap says why its daemon
/// cannot run; the row turns `error` ("bootstrap failed: …") at once. Control characters
/// become spaces and the text is cut to its last 500 characters; an empty one is refused.
async fn bootstrap_failed(state: &AppState, id: &InstanceId, secret: &str, why: &str) -> Reply {
    let clean: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if clean.is_empty() {
        return Err(ApiError::bad_request("bootstrap_failure is empty"));
    }
    let n = clean.chars().count();
    let tail: String = clean
        .chars()
        .skip(n.saturating_sub(MAX_BOOTSTRAP_FAILURE))
        .collect();
    let reason = format!("bootstrap failed: {tail}");
    let client = state.db.client().await?;
    match fleet::bootstrap_failed(&client, id, &Secret::presented(secret), &reason).await? {
        fleet::BootstrapReport::Recorded(hostname) => {
            tracing::warn!(%hostname, instance_id = %id, %reason, "a VM's bootstrap failed");
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "hostname": hostname.to_string(), "status": "error" }),
            ))
        }
        fleet::BootstrapReport::UnknownInstance => Err(ApiError::NotFound(format!(
            "instance {id} is not (yet) a VM of this deployment"
        ))),
        fleet::BootstrapReport::ReportedIn => Err(ApiError::Conflict(format!(
            "instance {id}'s daemon has reported in; its own status stands"
        ))),
        fleet::BootstrapReport::BadSecret => Err(ApiError::Refused(
            "the enrollment secret is not this instance's launch job's, or it expired".into(),
        )),
    }
}
