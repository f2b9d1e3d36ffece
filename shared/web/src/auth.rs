//! Who is calling, checked once per request.
//!
//! - A VM presents its own credential (`Authorization: Bearer <secret>`), bound to its
//!   hostname: only the SHA-256 is stored, in that VM's row. Missing → 401; a credential
//!   that is not this hostname's (another VM's, or made up) → 403. So a VM can touch only
//!   its own row. In legacy mode a call without a credential is accepted (classic
//!   clients); a presented credential is still checked.
//! - An admin presents a session cookie signed with the deployment's session key
//!   (HMAC-SHA256, with an expiry). The login page that issues it belongs to the admin
//!   routes; [`issue_session`] is here so both sides share one format.
//! - A log forwarder presents the forwarder token (its SHA-256 is configured).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use lablink_core::credential::Secret;
use lablink_core::db::vms;
use lablink_core::domain::Hostname;
use lambda_http::Request;
use lambda_http::http::header;
use sha2::Sha256;

use crate::{ApiError, AppState};

pub const SESSION_COOKIE: &str = "lablink_session";

/// The key that signs admin sessions.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl SessionKey {
    pub fn from_hex(v: &str) -> Result<Self, &'static str> {
        let bytes = hex::decode(v).map_err(|_| "not hex")?;
        if bytes.len() < 32 {
            return Err("shorter than 32 bytes");
        }
        Ok(Self(bytes))
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(payload.as_bytes());
        m
    }
}

/// A signed session cookie value for `user`, valid until `expires`.
pub fn issue_session(key: &SessionKey, user: &str, expires: DateTime<Utc>) -> String {
    let payload = format!("v1.{}.{}", B64.encode(user), expires.timestamp());
    let sig = B64.encode(key.mac(&payload).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// The user of a valid, unexpired session cookie value.
pub fn verify_session(key: &SessionKey, value: &str, now: DateTime<Utc>) -> Option<String> {
    let (payload, sig) = value.rsplit_once('.')?;
    let sig = B64.decode(sig).ok()?;
    key.mac(payload).verify_slice(&sig).ok()?;
    let mut parts = payload.split('.');
    let (Some("v1"), Some(user), Some(exp), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if exp.parse::<i64>().ok()? <= now.timestamp() {
        return None;
    }
    String::from_utf8(B64.decode(user).ok()?).ok()
}

/// How a request was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The VM itself, with its credential.
    Vm,
    /// A legacy-mode call without a credential.
    Legacy,
    /// An admin session, for this user.
    Admin(String),
    /// The log forwarder.
    Forwarder,
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The admin user of a valid session on this request, if any.
pub fn admin_session(state: &AppState, req: &Request) -> Option<String> {
    let key = state.config.session_key.as_ref()?;
    verify_session(key, cookie(req, SESSION_COOKIE)?, Utc::now())
}

/// An admin session is required (JSON routes answer 401 without one).
pub fn require_admin(state: &AppState, req: &Request) -> Result<Access, ApiError> {
    admin_session(state, req)
        .map(Access::Admin)
        .ok_or(ApiError::Unauthorized)
}

/// The VM `host` itself must be calling (or, in legacy mode, anyone without a credential).
pub async fn require_vm(state: &AppState, req: &Request, host: &Hostname) -> Result<Access, ApiError> {
    let Some(token) = bearer(req) else {
        if state.config.legacy_vm_auth {
            return Ok(Access::Legacy);
        }
        return Err(ApiError::Unauthorized);
    };
    let client = state.db.client().await?;
    match vms::credential_hash(&client, host).await? {
        None => Err(ApiError::NotFound(format!("unknown VM {host}"))),
        Some(Some(hash)) if hash.matches(&Secret::presented(token)) => Ok(Access::Vm),
        Some(_) => Err(ApiError::Forbidden),
    }
}

/// Reads allowed to the VM itself and to admins.
pub async fn require_vm_or_admin(
    state: &AppState,
    req: &Request,
    host: &Hostname,
) -> Result<Access, ApiError> {
    if let Some(user) = admin_session(state, req) {
        return Ok(Access::Admin(user));
    }
    // In legacy mode reads still need a credential: they may show another person's data.
    if bearer(req).is_none() {
        return Err(ApiError::Unauthorized);
    }
    require_vm(state, req, host).await
}

/// Log writes: the forwarder token, or the VM's own credential for its own stream.
pub async fn require_log_writer(
    state: &AppState,
    req: &Request,
    host: &Hostname,
) -> Result<Access, ApiError> {
    if let (Some(token), Some(hash)) = (bearer(req), state.config.forwarder_token_hash.as_ref())
        && hash.matches(&Secret::presented(token))
    {
        return Ok(Access::Forwarder);
    }
    require_vm(state, req, host).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_with_the_key_and_before_expiry() {
        let key = SessionKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = SessionKey::from_hex(&"cd".repeat(32)).unwrap();
        let now = Utc::now();
        let v = issue_session(&key, "admin", now + chrono::Duration::hours(1));
        assert_eq!(verify_session(&key, &v, now).as_deref(), Some("admin"));
        assert_eq!(verify_session(&other, &v, now), None);
        assert_eq!(verify_session(&key, &v, now + chrono::Duration::hours(2)), None);
        let forged = v.replacen("v1.YWRtaW4", "v1.cm9vdA", 1);
        assert_eq!(verify_session(&key, &forged, now), None);
        assert_eq!(verify_session(&key, "garbage", now), None);
        assert!(SessionKey::from_hex("abcd").is_err());
    }
}
