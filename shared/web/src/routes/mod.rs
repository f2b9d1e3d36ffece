//! Every HTTP route of the API: one [`Route`] each, defined beside its handler in the
//! file of its group, and [`ALL`], the one table the local runner mounts and the tests
//! hold `functions/manifest.json` and the function crates to. A route's Lambda names its
//! own `Route` (`functions/<function>/src/main.rs`), so its binary links that handler
//! and what the handler calls, nothing else.
//!
//! Groups (each its own file): [`participant`] (the form, the free count, health),
//! [`vm`] (the daemon's reports and the status/log reads), [`enrollment`],
//! [`admin_pages`] (login and the console's pages), [`admin_jobs`] (launch, destroy,
//! job status, per-VM actions), [`workshop`] (who may take a seat), [`credentials`] (stored AWS credentials), [`export`] (data export).
//! Contracts: seed 004 §2 and the design brief's "Wire contracts to keep".

use std::future::Future;
use std::pin::Pin;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};

use crate::{ApiError, AppState};

#[cfg(feature = "jobs")]
pub mod admin_jobs;
#[cfg(feature = "admin")]
pub mod admin_pages;
#[cfg(feature = "aws-credentials")]
pub mod credentials;
pub mod enrollment;
pub mod export;
pub mod participant;
pub mod vm;
#[cfg(feature = "admin")]
pub mod workshop;

/// What a handler returns; an error becomes its response in [`Route::handle`] only.
pub type Reply = Result<Response<Body>, ApiError>;
/// A handler's future (boxed, so a [`Route`] is plain data).
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;
/// A route's handler: parse the request, call the core, render.
pub type Handler = for<'a> fn(&'a AppState, &'a Request) -> HandlerFuture<'a>;

/// `handler!(f)`: the [`Handler`] of `async fn f(&AppState, &Request) -> Reply`.
macro_rules! handler {
    ($f:path) => {{
        fn boxed<'a>(
            state: &'a $crate::AppState,
            req: &'a $crate::Request,
        ) -> $crate::routes::HandlerFuture<'a> {
            Box::pin($f(state, req))
        }
        boxed
    }};
}
pub(crate) use handler;

/// The two methods our routes use (a GET route answers HEAD too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    pub fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }
}

/// Who calls a route (the manifest's `access`: the CDK app uses it for throttling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Participant,
    Vm,
    Admin,
    Public,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Participant => "participant",
            Access::Vm => "vm",
            Access::Admin => "admin",
            Access::Public => "public",
        }
    }
}

/// What a route's function reaches (the manifest's `db`, `jobs_table` and
/// `export_bucket`: the CDK app grants exactly these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaches {
    pub db: bool,
    pub jobs_table: bool,
    /// `Some("read")`, `Some("readwrite")` or `None`.
    pub export_bucket: Option<&'static str>,
}

impl Reaches {
    pub const NOTHING: Reaches = Reaches {
        db: false,
        jobs_table: false,
        export_bucket: None,
    };
    pub const DB: Reaches = Reaches {
        db: true,
        jobs_table: false,
        export_bucket: None,
    };
    pub const DB_AND_JOBS: Reaches = Reaches {
        db: true,
        jobs_table: true,
        export_bucket: None,
    };
}

/// How a refusal is shown. Decided once per route: a browser's form post to a job
/// route gets a page with a way back; everything else gets the JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Json,
    /// A page for a browser (form post or `Accept: text/html`), JSON for a script.
    PageOrJson {
        back: &'static str,
        label: &'static str,
    },
}

/// One HTTP route: where it is, who calls it, what its function links and reaches, and
/// its handler.
#[derive(Clone, Copy)]
pub struct Route {
    /// The function (crate and binary) that serves it.
    pub function: &'static str,
    pub verb: Verb,
    /// The API Gateway route path (`{param}` is one segment).
    pub path: &'static str,
    pub access: Access,
    /// The `lablink-web` features its crate enables (nothing else is linked).
    pub features: &'static [&'static str],
    pub reaches: Reaches,
    pub on_error: OnError,
    pub handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.verb.as_str(), self.path, self.function)
    }
}

/// Every route, in the manifest's order (with every feature; the local runner and the
/// tests use it, a Lambda never does).
#[cfg(feature = "full")]
pub const ALL: [Route; 36] = [
    participant::INDEX,
    participant::REQUEST_VM,
    participant::UNASSIGNED_VMS_COUNT,
    vm::UPDATE_INUSE_STATUS,
    vm::GPU_HEALTH,
    vm::POST_VM_STATUS,
    vm::LIST_VM_STATUS,
    vm::GET_VM_STATUS,
    vm::POST_VM_LOGS,
    vm::GET_VM_LOGS,
    vm::POST_VM_METRICS,
    participant::HEALTH,
    enrollment::ENROLL,
    admin_pages::LOGIN_PAGE,
    admin_pages::LOGIN,
    admin_pages::LOGOUT,
    admin_pages::HOME,
    admin_pages::CREATE,
    admin_pages::INSTANCES,
    admin_pages::DELETE,
    admin_pages::LOGS,
    admin_pages::JOB,
    admin_jobs::LAUNCH,
    admin_jobs::DESTROY,
    admin_jobs::GET_JOB,
    credentials::SET_AWS_CREDENTIALS,
    credentials::UNSET_AWS_CREDENTIALS,
    export::SCP_CLIENT,
    export::VM_EXPORT,
    export::EXPORT_DOWNLOAD,
    participant::SEAT_PAGE,
    participant::SEAT_STATUS,
    participant::SEAT_CODE,
    admin_jobs::VM_ACTION,
    workshop::WORKSHOP,
    workshop::FLEET_END,
];

/// The route served by `function` (tests and tools).
#[cfg(feature = "full")]
pub fn by_function(function: &str) -> Option<Route> {
    ALL.into_iter().find(|r| r.function == function)
}

impl Route {
    /// Method and API Gateway route path.
    pub fn method_and_path(&self) -> (Method, &'static str) {
        (self.verb.method(), self.path)
    }

    /// Whether `path` matches this route's path pattern (`{param}` is one segment).
    pub fn matches_path(&self, path: &str) -> bool {
        let mut p = self.path.split('/');
        let mut a = path.split('/');
        loop {
            match (p.next(), a.next()) {
                (None, None) => return true,
                (Some(seg), Some(got)) if seg.starts_with('{') => {
                    if got.is_empty() {
                        return false;
                    }
                }
                (Some(seg), Some(got)) if seg == got => {}
                _ => return false,
            }
        }
    }

    /// Serve one request: method check, then the handler; every error becomes its
    /// response here, and only here.
    pub async fn handle(&self, state: &AppState, req: Request) -> Response<Body> {
        let method_ok =
            req.method() == self.verb.method() || (self.verb == Verb::Get && req.method() == Method::HEAD);
        if !method_ok {
            return self.refused(ApiError::MethodNotAllowed(self.verb.as_str()), None);
        }
        // Paused between workshops: the proxy and the holder are gone and the database is
        // stopped, so nothing is looked at or called (docs/deploy.md, "Between workshops").
        if state.config.paused {
            // A page for a browser's form post or page view; JSON for the API's reads and
            // for scripts.
            let page = crate::request::wants_html(&req)
                && (!self.path.starts_with("/api/") || req.method() == Method::POST);
            return crate::respond::paused(!page);
        }
        // The admin console answers only its allowed networks, before anything of the
        // request (its body included) is looked at.
        #[cfg(feature = "admin")]
        if self.access == Access::Admin
            && let Err(e) = crate::auth::admin_network(state, &req)
        {
            return self.refused(e, Some(&req));
        }
        match (self.handler)(state, &req).await {
            Ok(r) => r,
            Err(e) => self.refused(e, Some(&req)),
        }
    }

    /// The response for an error. `req` is given for a handler's error (it may be shown
    /// as a page), not for a refused method.
    fn refused(&self, e: ApiError, req: Option<&Request>) -> Response<Body> {
        let status = e.status();
        if status.is_client_error() {
            tracing::info!(route = self.function, status = status.as_u16(), error = %e, "refused");
        }
        if let (OnError::PageOrJson { back, label }, Some(req)) = (self.on_error, req)
            && status.is_client_error()
            && crate::request::wants_html(req)
        {
            return crate::respond::html(
                status,
                lablink_templates::admin::message_page(None, "Not done", &e.to_string(), (back, label)),
            );
        }
        e.into_response()
    }
}

/// `{"message": text}` with 200.
pub(crate) fn message(text: &str) -> Response<Body> {
    crate::respond::json(StatusCode::OK, &lablink_wire::Message::new(text))
}

pub(crate) fn not_found(host: &lablink_core::domain::Hostname) -> ApiError {
    ApiError::NotFound(format!("unknown VM {host}"))
}
