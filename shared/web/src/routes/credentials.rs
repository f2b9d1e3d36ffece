//! The two classic credential routes: set validates AWS keys (STS) and stores them for
//! the provisioner, with an expiry; unset removes them. Functions themselves use IAM
//! roles (design brief, "AWS credentials in the web UI").

use chrono::{Duration, Utc};
use lablink_ops::aws::{self as ops_aws, CREDENTIALS_SETTING, StoredCredentials};
use lambda_http::Request;
use lambda_http::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{Access, OnError, Reaches, Reply, Route, Verb, handler};
use crate::AppState;
use crate::auth::{self, Admin, CsrfForm};
use crate::request::{self, SMALL_BODY, wants_html};
use crate::respond::json;

/// How long stored AWS credentials are used.
pub const CREDENTIALS_HOURS: i64 = 12;

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
        let mut resp = super::admin_pages::render_home(state, admin, &csrf, Some((ok, message))).await?;
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

pub const SET_AWS_CREDENTIALS: Route = Route {
    function: "set-aws-credentials",
    verb: Verb::Post,
    path: "/api/admin/set-aws-credentials",
    access: Access::Admin,
    features: &["admin", "jobs", "aws-credentials"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::Json,
    handler: handler!(set_aws_credentials),
};

async fn set_aws_credentials(state: &AppState, req: &Request) -> Reply {
    let form: CredentialsForm = request::form(req, SMALL_BODY)?;
    let admin = auth::require_admin_write(state, req, form.csrf.as_deref()).await?;
    let id = form.aws_access_key_id.trim();
    let secret = form.aws_secret_access_key.trim();
    let token = form.aws_token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let shape_ok = (16..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && (16..=128).contains(&secret.len())
        // AWS's secrets and session tokens are base64 text: anything else (a control
        // character, a NUL the store cannot hold) is no credential.
        && secret.bytes().all(|b| b.is_ascii_graphic())
        && token.is_none_or(|t| t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_graphic()));
    if !shape_ok {
        return credentials_reply(
            state,
            req,
            &admin,
            false,
            "An access key id (16–128 letters and digits) and a secret access key (16–128 visible characters) are required.",
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

pub const UNSET_AWS_CREDENTIALS: Route = Route {
    function: "unset-aws-credentials",
    verb: Verb::Post,
    path: "/api/admin/unset-aws-credentials",
    access: Access::Admin,
    features: &["admin", "jobs", "aws-credentials"],
    reaches: Reaches::DB_AND_JOBS,
    on_error: OnError::Json,
    handler: handler!(unset_aws_credentials),
};

async fn unset_aws_credentials(state: &AppState, req: &Request) -> Reply {
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
