//! Who is calling, checked once per request.
//!
//! - A VM presents its own credential (`Authorization: Bearer <secret>`), bound to its
//!   hostname: only the SHA-256 is stored, in that VM's row. Missing → 401; a credential
//!   that is not this hostname's (another VM's, or made up) → 403. So a VM can touch only
//!   its own row. In legacy mode a call without a credential is accepted (classic
//!   clients); a presented credential is still checked.
//! - An admin presents a session cookie signed with the deployment's session key
//!   (HMAC-SHA256, with an expiry; HttpOnly, SameSite=Strict), or, from a script, HTTP
//!   Basic. Every state-changing admin request also needs the session's CSRF token (or,
//!   with Basic, no browser `Origin`). Password checks are argon2 and throttled per
//!   address and per user.
//! - A log forwarder presents the forwarder token (its SHA-256 is configured).

#[cfg(feature = "admin")]
use base64::Engine;
#[cfg(feature = "admin")]
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
#[cfg(feature = "admin")]
use chrono::{DateTime, Utc};
#[cfg(feature = "admin")]
use hmac::{Hmac, Mac};
use lablink_core::credential::{Secret, vm_admits};
use lablink_core::domain::Hostname;
#[cfg(feature = "admin")]
use lablink_db::admin as admin_db;
use lablink_db::vms;
use lambda_http::Request;
use lambda_http::http::header;
#[cfg(feature = "admin")]
use sha2::Sha256;

use crate::{ApiError, AppState};

#[cfg(feature = "admin")]
pub const SESSION_COOKIE: &str = "lablink_session";

#[cfg(feature = "admin")]
/// The key that signs admin sessions.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

#[cfg(feature = "admin")]
impl SessionKey {
    pub fn from_hex(v: &str) -> Result<Self, &'static str> {
        let bytes = hex::decode(v).map_err(|_| "not hex")?;
        if bytes.len() < 32 {
            return Err("shorter than 32 bytes");
        }
        Ok(Self(bytes))
    }

    /// A fresh random key (the local runner's, when none is configured).
    pub fn generate() -> Self {
        let mut b = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Self(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(payload.as_bytes());
        m
    }
}

#[cfg(feature = "admin")]
/// The argon2id PHC string of `password` (fresh salt; the crate's default parameters).
pub fn hash_password(password: &str) -> String {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

#[cfg(feature = "admin")]
/// A signed session cookie value: `user`, its expiry and the session's random id (the
/// server-side record's key), under the session key's HMAC.
pub fn issue_session(key: &SessionKey, user: &str, session_id: &str, expires: DateTime<Utc>) -> String {
    sign(
        key,
        format!("v2.{}.{}.{session_id}", B64.encode(user), expires.timestamp()),
    )
}

#[cfg(feature = "admin")]
/// `payload.<HMAC-SHA256 of payload>` under the session key (sessions, device cookies).
fn sign(key: &SessionKey, payload: String) -> String {
    let sig = B64.encode(key.mac(&payload).finalize().into_bytes());
    format!("{payload}.{sig}")
}

#[cfg(feature = "admin")]
/// The `N` fields of a `kind.<f1>…<fN>.<sig>` value whose signature is the session key's.
fn signed_fields<'a, const N: usize>(key: &SessionKey, value: &'a str, kind: &str) -> Option<[&'a str; N]> {
    let (payload, sig) = value.rsplit_once('.')?;
    key.mac(payload).verify_slice(&B64.decode(sig).ok()?).ok()?;
    let mut parts = payload.split('.');
    if parts.next()? != kind {
        return None;
    }
    let fields: Vec<&str> = parts.collect();
    fields.try_into().ok()
}

#[cfg(feature = "admin")]
/// The user and session id of a validly signed, unexpired session cookie value (the
/// caller still checks the server-side record: [`admin_session`]).
pub fn verify_session(key: &SessionKey, value: &str, now: DateTime<Utc>) -> Option<(String, String)> {
    let [user, exp, id] = signed_fields(key, value, "v2")?;
    if exp.parse::<i64>().ok()? <= now.timestamp() {
        return None;
    }
    Some((String::from_utf8(B64.decode(user).ok()?).ok()?, id.to_owned()))
}

#[cfg(feature = "admin")]
/// The record key of a session id: only its SHA-256 is stored.
pub fn session_hash(session_id: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(session_id.as_bytes()).into()
}

/// The cookie that marks a browser the admin has logged in from before (OWASP's
/// "device cookies"): failed logins it carries count against that device, not against
/// the admin user, so a guesser elsewhere cannot lock the admin out.
#[cfg(feature = "admin")]
pub const DEVICE_COOKIE: &str = "lablink_device";
/// How long a device cookie is honoured.
#[cfg(feature = "admin")]
pub const DEVICE_DAYS: i64 = 90;
/// Failed logins per device cookie within the window.
#[cfg(feature = "admin")]
pub const MAX_FAILURES_PER_DEVICE: i32 = 10;

#[cfg(feature = "admin")]
/// A device cookie for `user`: a random nonce and an expiry under the session key.
pub fn issue_device(key: &SessionKey, user: &str, expires: DateTime<Utc>) -> String {
    let secret = lablink_core::credential::Secret::generate();
    let nonce = &secret.expose()[..32];
    sign(
        key,
        format!("d1.{}.{}.{nonce}", B64.encode(user), expires.timestamp()),
    )
}

#[cfg(feature = "admin")]
/// The nonce of a valid device cookie for `user`.
pub fn verify_device(key: &SessionKey, value: &str, user: &str, now: DateTime<Utc>) -> Option<String> {
    let [u, exp, nonce] = signed_fields(key, value, "d1")?;
    let ok = exp.parse::<i64>().ok()? > now.timestamp() && B64.decode(u).ok()? == user.as_bytes();
    ok.then(|| nonce.to_owned())
}

/// How long an admin session lasts.
#[cfg(feature = "admin")]
pub const SESSION_HOURS: i64 = 8;

#[cfg(feature = "admin")]
fn secure(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, and Secure over HTTPS.
#[cfg(feature = "admin")]
pub(crate) fn cookie_header(req: &Request, name: &str, value: &str, path: &str, max_age: i64) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure(req) { "; Secure" } else { "" }
    )
}

/// A write with nothing but its CSRF token (logout, unset credentials).
#[cfg(feature = "admin")]
#[derive(serde::Deserialize, Default)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: Option<String>,
}

/// How a request was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The VM itself, with its credential.
    Vm,
    /// A legacy-mode call without a credential.
    Legacy,
    /// An admin, by session cookie or HTTP Basic.
    #[cfg(feature = "admin")]
    Admin(Admin),
    /// The log forwarder.
    Forwarder,
}

/// An admin caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub user: String,
    /// The session cookie's value (its CSRF token is derived from it); `None` for a
    /// script using HTTP Basic.
    pub session: Option<String>,
}

fn bearer(req: &Request) -> Option<&str> {
    lablink_core::credential::bearer_token(req.headers().get(header::AUTHORIZATION)?.to_str().ok()?)
}

#[cfg(feature = "admin")]
/// `Authorization: Basic` user and password.
fn basic(req: &Request) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

pub fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(feature = "admin")]
/// The CSRF token of a session: bound to that session's cookie value, so it is useless
/// to anyone who cannot read the admin's pages.
pub fn csrf_token(key: &SessionKey, session: &str) -> String {
    B64.encode(key.mac(&format!("csrf.{session}")).finalize().into_bytes())
}

/// Constant-time string equality.
pub fn same(a: &str, b: &str) -> bool {
    lablink_core::credential::constant_time_eq(a.as_bytes(), b.as_bytes())
}

/// The client's address: API Gateway's `sourceIp` (the local runner fills it from the
/// socket). Never a client-supplied header.
pub fn client_ip(req: &Request) -> String {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.http.source_ip.clone().unwrap_or_else(|| "unknown".into()),
        _ => "unknown".into(),
    }
}

#[cfg(feature = "admin")]
/// Failed logins from one address within the window before it must wait.
pub const MAX_FAILURES_PER_ADDRESS: i32 = 5;
#[cfg(feature = "admin")]
/// Failed logins for the admin user (all addresses together) within the window.
pub const MAX_FAILURES_PER_USER: i32 = 50;
#[cfg(feature = "admin")]
pub fn throttle_window() -> chrono::Duration {
    chrono::Duration::minutes(15)
}

#[cfg(feature = "admin")]
/// The keys a login attempt counts against: its address, and either the browser's
/// device cookie (when it holds a valid one for this user) or the user (all addresses
/// together). So the per-user lock stops a guesser spread over many addresses without
/// locking out the admin's own browser.
pub fn throttle_limits(ip: &str, user: &str, device: Option<&str>) -> Vec<admin_db::Limit> {
    vec![
        admin_db::Limit {
            key: format!("ip:{ip}"),
            max_failures: MAX_FAILURES_PER_ADDRESS,
        },
        match device {
            Some(nonce) => admin_db::Limit {
                key: format!("device:{nonce}"),
                max_failures: MAX_FAILURES_PER_DEVICE,
            },
            None => admin_db::Limit {
                // Control characters dropped: Postgres text cannot hold NUL (a login
                // with one was a 500), and a name that differs only in them counts as it.
                key: format!(
                    "user:{}",
                    user.chars()
                        .filter(|c| !c.is_control())
                        .take(64)
                        .collect::<String>()
                ),
                max_failures: MAX_FAILURES_PER_USER,
            },
        },
    ]
}

#[cfg(feature = "admin")]
/// Check a user name and password (throttled): `Ok(true)` on a match. Every attempt is
/// counted against the address and the user (or the browser's device cookie) before
/// the password is checked; a success takes its count back.
pub async fn check_password(
    state: &AppState,
    req: &Request,
    user: &str,
    password: &str,
) -> Result<bool, ApiError> {
    let admin = state.admin().await?;
    let ip = client_ip(req);
    let now = Utc::now();
    let device = cookie(req, DEVICE_COOKIE).and_then(|v| verify_device(&admin.session_key, v, user, now));
    let limits = throttle_limits(&ip, user, device.as_deref());
    let client = state.db.client().await?;
    // Counted before the slow hash, atomically: a parallel burst gets at most the limit
    // of checks, not one each.
    if let Some(until) = admin_db::reserve_attempt(&client, &limits, throttle_window(), now).await? {
        return Err(ApiError::TooManyRequests {
            retry_after: (until - now).num_seconds().max(1) as u64,
        });
    }
    let hash = admin.password_hash.clone();
    let pw = password.to_owned();
    // argon2 is deliberately slow: off the async workers.
    let password_ok = tokio::task::spawn_blocking(move || {
        argon2::PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::PasswordVerifier::verify_password(&argon2::Argon2::default(), pw.as_bytes(), &h).is_ok()
        })
    })
    .await
    .unwrap_or(false);
    let ok = password_ok && same(user, &admin.user);
    if ok {
        admin_db::clear_failures(&client, &limits[0].key).await?;
        admin_db::forgive_attempt(&client, &limits[1].key).await?;
    } else {
        // Counted already.
        tracing::warn!(ip, trusted_device = device.is_some(), "failed admin login");
    }
    Ok(ok)
}

#[cfg(feature = "admin")]
/// The admin console answers only the networks in `LABLINK_ADMIN_ALLOWED_CIDRS` (when
/// set): 403 elsewhere, before anything else is looked at.
pub fn admin_network(state: &AppState, req: &Request) -> Result<(), ApiError> {
    match &state.config.admin_cidrs {
        Some(list) if !list.allows(&client_ip(req)) => Err(ApiError::Refused(
            "the admin console is not open to your network (LABLINK_ADMIN_ALLOWED_CIDRS)".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(feature = "admin")]
/// The admin of a live session on this request, if any: the cookie's signature and
/// expiry, then its server-side record (not ended by a logout, issued under the admin
/// secret in force).
pub async fn admin_session(state: &AppState, req: &Request) -> Result<Option<Admin>, ApiError> {
    let Some(value) = cookie(req, SESSION_COOKIE) else {
        return Ok(None);
    };
    let admin = state.admin().await?;
    let now = Utc::now();
    let Some((user, id)) = verify_session(&admin.session_key, value, now) else {
        return Ok(None);
    };
    let client = state.db.client().await?;
    if !admin_db::session_live(&client, &session_hash(&id), &user, &admin.epoch(), now).await? {
        return Ok(None);
    }
    Ok(Some(Admin {
        user,
        session: Some(value.to_owned()),
    }))
}

#[cfg(feature = "admin")]
/// An admin is required: a session cookie, or HTTP Basic (scripts). Reads only; writes
/// go through [`require_admin_write`].
pub async fn require_admin(state: &AppState, req: &Request) -> Result<Admin, ApiError> {
    admin_network(state, req)?;
    if let Some(a) = admin_session(state, req).await? {
        return Ok(a);
    }
    if let Some((user, password)) = basic(req) {
        if check_password(state, req, &user, &password).await? {
            return Ok(Admin { user, session: None });
        }
        return Err(ApiError::Unauthorized);
    }
    // Without an admin configured, say so rather than "log in".
    state.admin().await?;
    Err(ApiError::Unauthorized)
}

#[cfg(feature = "admin")]
/// Whether `Origin` (when a browser sent one) is this site. A cross-site form post
/// always carries a foreign Origin.
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(feature = "admin")]
/// A state-changing admin request. With a session: the CSRF token (form field `csrf`
/// or header `X-CSRF-Token`) must be the session's, and `Origin`, when present, this
/// site. With HTTP Basic: no `Origin` at all (browsers send one on every POST, so a
/// cross-site form cannot ride on remembered Basic credentials; scripts send none).
pub async fn require_admin_write(
    state: &AppState,
    req: &Request,
    form_csrf: Option<&str>,
) -> Result<Admin, ApiError> {
    if !same_origin(req) {
        return Err(ApiError::Refused("cross-site request refused".into()));
    }
    let admin = require_admin(state, req).await?;
    match &admin.session {
        Some(session) => {
            let key = &state.admin().await?.session_key;
            let presented =
                form_csrf.or_else(|| req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()));
            match presented {
                Some(t) if same(t, &csrf_token(key, session)) => Ok(admin),
                _ => Err(ApiError::Refused(
                    "this form has no valid CSRF token; reload the page and try again".into(),
                )),
            }
        }
        None if req.headers().contains_key(header::ORIGIN) => Err(ApiError::Refused(
            "HTTP Basic is for scripts; a browser must log in at /admin/login".into(),
        )),
        None => Ok(admin),
    }
}

/// The VM `host` itself must be calling (or, in legacy mode, anyone without a credential).
pub async fn require_vm(state: &AppState, req: &Request, host: &Hostname) -> Result<Access, ApiError> {
    let Some(token) = bearer(req) else {
        if state.config.legacy_vm_auth {
            // Classic VMs only (rows without a credential): a VM that has one must show
            // it, and an unknown one is answered the same (nothing tells them apart).
            let client = state.db.client().await?;
            if let Some(None) = vms::credential_hash(&client, host).await? {
                return Ok(Access::Legacy);
            }
        }
        return Err(ApiError::Unauthorized);
    };
    let client = state.db.client().await?;
    match vms::credential_hash(&client, host).await? {
        Some(stored) if vm_admits(stored.as_ref(), token) => Ok(Access::Vm),
        // An unknown hostname is refused exactly as a known one with the wrong
        // credential: a 404 would let anyone list the fleet's hostnames.
        Some(_) | None => Err(ApiError::Forbidden),
    }
}

#[cfg(feature = "admin")]
/// Reads allowed to the VM itself and to admins.
pub async fn require_vm_or_admin(
    state: &AppState,
    req: &Request,
    host: &Hostname,
) -> Result<Access, ApiError> {
    if cookie(req, SESSION_COOKIE).is_some() || basic(req).is_some() {
        admin_network(state, req)?;
    }
    if let Some(a) = admin_session(state, req).await? {
        return Ok(Access::Admin(a));
    }
    if basic(req).is_some() {
        return require_admin(state, req).await.map(Access::Admin);
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

#[cfg(all(test, feature = "admin"))]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_with_the_key_and_before_expiry() {
        let key = SessionKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = SessionKey::from_hex(&"cd".repeat(32)).unwrap();
        let now = Utc::now();
        let v = issue_session(&key, "admin", "s1d", now + chrono::Duration::hours(1));
        assert_eq!(
            verify_session(&key, &v, now),
            Some(("admin".into(), "s1d".into()))
        );
        assert_eq!(verify_session(&other, &v, now), None);
        assert_eq!(verify_session(&key, &v, now + chrono::Duration::hours(2)), None);
        let forged = v.replacen("v2.YWRtaW4", "v2.cm9vdA", 1);
        assert_eq!(verify_session(&key, &forged, now), None);
        assert_eq!(verify_session(&key, "garbage", now), None);
        assert!(SessionKey::from_hex("abcd").is_err());
    }

    #[test]
    fn device_cookies_are_bound_to_the_user_the_key_and_their_expiry() {
        let key = SessionKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = SessionKey::from_hex(&"cd".repeat(32)).unwrap();
        let now = Utc::now();
        let d = issue_device(&key, "admin", now + chrono::Duration::days(1));
        let nonce = verify_device(&key, &d, "admin", now).expect("valid");
        assert_eq!(nonce.len(), 32);
        assert_ne!(
            issue_device(&key, "admin", now + chrono::Duration::days(1)),
            d,
            "a fresh nonce each"
        );
        assert_eq!(verify_device(&key, &d, "root", now), None);
        assert_eq!(verify_device(&other, &d, "admin", now), None);
        assert_eq!(
            verify_device(&key, &d, "admin", now + chrono::Duration::days(2)),
            None
        );
        let session = issue_session(&key, "admin", "x", now + chrono::Duration::days(1));
        assert_eq!(
            verify_device(&key, &session, "admin", now),
            None,
            "a session is no device cookie"
        );
    }
}
