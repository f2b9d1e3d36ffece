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
