//! `POST /vm_startup`, `POST /vm_export` and `GET /healthz`.
//!
//! A startup poll: check the VM's credential and look for an undelivered assignment (one
//! query); if there is none, register as the hostname's waiter, look once more (an
//! assignment committed between the two is otherwise missed: its notification found no
//! waiter), then wait for the notification, the end of the window, or shutdown.
//! The assignment is marked delivered once its response body has been handed to the
//! connection; if that mark is lost, the VM gets the same assignment again on its next
//! poll and the daemon's on-disk record keeps it from running twice.
//!
//! An export poll: check the credential (one query), then answer from the open export
//! held in memory ([`crate::export`]), now or when a load rings; no query while waiting.

use std::pin::Pin as StdPin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body::Frame;
use lablink_core::credential::{bearer_token, vm_admits};
use lablink_core::domain::Hostname;
use lablink_db::vms;
use lablink_wire::{Assignment, ErrorBody, HolderHealth, ListenerState, ResetOrder, VmPoll};

use crate::Holder;
use crate::registry::{Delivery, Handout};

/// Largest `POST /vm_startup` body accepted (it is `{"hostname": "..."}`).
const BODY_LIMIT: usize = 4 * 1024;

pub fn router(holder: Arc<Holder>) -> Router {
    Router::new()
        .route("/vm_startup", post(vm_startup))
        .route("/vm_export", post(vm_export))
        .route("/healthz", get(healthz))
        .fallback(|| async { Refusal::NoRoute })
        .with_state(holder)
}

/// Every refusal of the holder, turned into its response in one place (`{"error"}`
/// with its status). Each changes nothing.
#[derive(Debug)]
enum Refusal {
    BadRequest(String),
    TooLarge,
    NoCredential,
    NotThisVm,
    /// The database is unreachable or silent (what failed is logged where it happened).
    Unavailable,
    NoRoute,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Refusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {BODY_LIMIT} bytes"),
            ),
            Refusal::NoCredential => (
                StatusCode::UNAUTHORIZED,
                "a VM credential (Authorization: Bearer) is required".into(),
            ),
            Refusal::NotThisVm => (
                StatusCode::FORBIDDEN,
                "this credential is not the one of this VM".into(),
            ),
            Refusal::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unavailable; retry shortly".into(),
            ),
            Refusal::NoRoute => (StatusCode::NOT_FOUND, "no such route".into()),
        };
        (status, axum::Json(ErrorBody::new(message))).into_response()
    }
}

/// A failed or silent query: logged with what was being done, answered 503.
fn db_down<'a>(doing: &'static str, host: &'a Hostname) -> impl FnOnce(String) -> Refusal + 'a {
    move |e| {
        tracing::error!(error = %e, %host, "{doing} failed");
        Refusal::Unavailable
    }
}

fn nothing_yet() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct Params {
    wait: Option<String>,
}

async fn vm_startup(
    State(holder): State<Arc<Holder>>,
    VmPollRequest { host, token, wait }: VmPollRequest,
) -> Result<Response, Refusal> {
    let cfg = &holder.config;
    let token = token.as_deref();
    if token.is_none() && !cfg.legacy_vm_auth {
        return Err(Refusal::NoCredential);
    }
    let window = match wait {
        Some(w) => w.min(cfg.max_wait),
        // A classic client sleeps 60 s after a 204, so it is held as long as allowed.
        None if token.is_none() => cfg.max_wait,
        None => cfg.default_wait,
    };

    // ---- authenticate and look for an assignment made while the VM was not waiting
    let client = holder.link.client().await.ok_or(Refusal::Unavailable)?;
    // A daemon with a credential acknowledges: its assignment stays pending until it
    // reports start-host's outcome (a lost response is handed over again).
    let acknowledges = token.is_some();
    let (hash, pending) = holder
        .link
        .query(vms::startup_lookup(&client, &host, acknowledges))
        .await
        .map_err(db_down("startup look-up", &host))?
        .ok_or({
            // An unknown hostname is refused as a known one would be (no credential: 401;
            // a credential: 403): a 404 would let anyone list the fleet's hostnames.
            if token.is_some() {
                Refusal::NotThisVm
            } else {
                Refusal::NoCredential
            }
        })?;
    match token {
        Some(token) if !vm_admits(hash.as_ref(), token) => return Err(Refusal::NotThisVm),
        // Legacy mode serves credential-less polls for classic VMs only: a VM that has a
        // credential must show it, or anyone could take its code and PIN.
        None if hash.is_some() => return Err(Refusal::NoCredential),
        _ => {}
    }
    if let Some(p) = pending {
        return Ok(deliver(&holder, host, p.into()));
    }

    // ---- wait
    let mut reg = holder.registry.register(&host, acknowledges);
    let recheck = holder
        .link
        .query(vms::pending_for(&client, &host, acknowledges))
        .await;
    if holder.stop.is_cancelled() {
        // Shutting down (the connection may be closing under this query): the VM polls
        // again, as after any window.
        return Ok(nothing_yet());
    }
    if let Some(p) = recheck.map_err(db_down("startup re-check", &host))? {
        return Ok(deliver(&holder, host, p.into()));
    }
    drop(client);
    let outcome = tokio::select! {
        r = &mut reg.rx => r.ok(),
        () = tokio::time::sleep(window) => None,
        () = holder.stop.cancelled() => None,
    };
    drop(reg);
    Ok(match outcome {
        Some(d) => deliver(&holder, host, d),
        None => nothing_yet(),
    })
}

/// The common part of both polls: `?wait=`, a bounded `{"hostname"}` body and the bearer
/// token, taken from the request by the extractor. Every refusal is a 4xx and changes
/// nothing. Only what the wait needs is kept: the request's headers and body are dropped
/// before waiting (a waiter's memory is what 10,000 VMs multiply).
struct VmPollRequest {
    host: Hostname,
    token: Option<String>,
    wait: Option<Duration>,
}

impl<S: Send + Sync> FromRequest<S> for VmPollRequest {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let Ok(Query(params)) = Query::<Params>::from_request_parts(&mut parts, state).await else {
            return Err(Refusal::BadRequest("invalid query string".into()));
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_owned);
        let body = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| Refusal::TooLarge)?;
        let parsed: VmPoll = serde_json::from_slice(&body)
            .map_err(|e| Refusal::BadRequest(format!("invalid JSON body: {e}")))?;
        let host = Hostname::parse(&parsed.hostname)
            .map_err(|e| Refusal::BadRequest(format!("invalid hostname: {e}")))?;
        let wait = match params.wait.as_deref() {
            Some(v) => Some(Duration::from_secs(v.parse::<u64>().map_err(|_| {
                Refusal::BadRequest(format!("wait must be whole seconds, got {v:?}"))
            })?)),
            None => None,
        };
        Ok(VmPollRequest { host, token, wait })
    }
}

/// `POST /vm_export`: the daemon's second long-poll. It answers 200 with the open
/// export's task for this VM (its own upload URL, what to collect, the deadline) as soon
/// as one opens, or 204 when the window ends. Only with the VM's credential.
async fn vm_export(
    State(holder): State<Arc<Holder>>,
    VmPollRequest { host, token, wait }: VmPollRequest,
) -> Result<Response, Refusal> {
    let cfg = &holder.config;
    let token = token.ok_or(Refusal::NoCredential)?;
    let window = wait.unwrap_or(cfg.default_wait).min(cfg.max_wait);
    let client = holder.link.client().await.ok_or(Refusal::Unavailable)?;
    let stored = holder
        .link
        .query(vms::credential_hash(&client, &host))
        .await
        .map_err(db_down("export credential look-up", &host))?
        .ok_or(Refusal::NotThisVm)?;
    if !vm_admits(stored.as_ref(), &token) {
        return Err(Refusal::NotThisVm);
    }
    drop(client);
    // Subscribe before looking, so an export loaded in between rings this bell. Looking
    // is in memory: the holder loads the open export once per change, not per waiter.
    let mut bell = holder.exports.subscribe();
    let deadline = tokio::time::Instant::now() + window;
    loop {
        if let Some(task) = holder.exports.task_for(&host) {
            return Ok((StatusCode::OK, axum::Json(task)).into_response());
        }
        tokio::select! {
            r = bell.changed() => if r.is_err() { return Ok(nothing_yet()) },
            () = tokio::time::sleep_until(deadline) => return Ok(nothing_yet()),
            () = holder.stop.cancelled() => return Ok(nothing_yet()),
        }
    }
}

/// The 200 answer. An assignment's delivery is marked once the body has been taken by
/// the connection; a reset order stays pending until the daemon reports it done.
fn deliver(holder: &Arc<Holder>, host: Hostname, handout: Handout) -> Response {
    let d = match handout {
        Handout::Assignment(d) => d,
        Handout::Reset { id, keep_files } => {
            let order = ResetOrder::new(u64::try_from(id).unwrap_or_default(), keep_files);
            return (StatusCode::OK, axum::Json(order)).into_response();
        }
    };
    let body = serde_json::to_vec(&Assignment::new(host.as_str(), d.pin.as_str(), &d.command))
        .expect("a struct of strings serializes");
    let mark = MarkOnSent {
        body: Some(Bytes::from(body)),
        sent: false,
        on_sent: Some((Arc::clone(holder), host, d)),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::new(mark))
        .expect("static headers are valid")
}

/// A one-chunk body that records the delivery when dropped after its chunk was taken.
struct MarkOnSent {
    body: Option<Bytes>,
    sent: bool,
    on_sent: Option<(Arc<Holder>, Hostname, Delivery)>,
}

impl http_body::Body for MarkOnSent {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: StdPin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.body.take() {
            Some(b) => {
                this.sent = true;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.body.as_ref().map_or(0, |b| b.len() as u64))
    }
}

impl Drop for MarkOnSent {
    fn drop(&mut self) {
        if !self.sent {
            // Never handed to the client (it went away first): stays undelivered and is
            // found again by the VM's next poll.
            return;
        }
        if let Some((holder, host, d)) = self.on_sent.take() {
            tokio::spawn(async move { holder.mark_delivered(host, d).await });
        }
    }
}

async fn healthz(State(holder): State<Arc<Holder>>) -> Response {
    let up = holder.link.is_up().await;
    let body = HolderHealth {
        listener: if up {
            ListenerState::Listening
        } else {
            ListenerState::Reconnecting
        },
        waiters: holder.registry.len() as u64,
        export_waiters: holder.exports.waiters() as u64,
        connections: holder.link.generation(),
        queries: holder.link.queries(),
    };
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
