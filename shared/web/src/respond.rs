//! Building responses: JSON, pages, redirects. Every response a handler makes comes
//! from here, with the same caching and security headers.

use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Response};

/// A JSON response: a `lablink-wire` message or a `serde_json::Value`.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_string(value).expect("our response types serialize (string keys only)");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body))
        .expect("static headers are valid")
}

/// An HTML page. `Referrer-Policy: same-origin`, not `no-referrer`: nothing leaks to other
/// sites, while a browser's own form posts keep a real `Origin` (under `no-referrer`
/// Chromium sends `Origin: null`, which the admin write check must refuse).
pub fn html(status: StatusCode, page: lablink_templates::Markup) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "same-origin")
        .body(Body::from(page.into_string()))
        .expect("static headers are valid")
}

/// What every route answers while the deployment is paused between workshops.
pub const PAUSED_MESSAGE: &str = "This LabLink deployment is paused between workshops; its data is kept. \
     The admin resumes it with `scripts/deploy --env NAME --resume` (about 10 minutes).";
/// Seconds a client is told to wait before asking a paused deployment again.
pub const PAUSED_RETRY_AFTER_SECONDS: u32 = 3600;

/// 503 with `Retry-After` while paused: `{"status":"paused","message"}` for the API and
/// scripts (`json`), else a page.
pub fn paused(json: bool) -> Response<Body> {
    let mut r = if json {
        self::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "paused", "message": PAUSED_MESSAGE }),
        )
    } else {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            lablink_templates::paused_page(PAUSED_MESSAGE),
        )
    };
    r.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from(PAUSED_RETRY_AFTER_SECONDS),
    );
    r
}

/// A 303 to `to` (after a form post, or to the login page). A target that is no valid
/// header value (it came from a request) goes to `/` instead of failing the response.
pub fn redirect(to: &str) -> Response<Body> {
    let location = header::HeaderValue::from_str(to).unwrap_or(header::HeaderValue::from_static("/"));
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Empty)
        .expect("static headers are valid")
}
