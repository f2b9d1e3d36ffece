//! Turning a request into typed input, one helper per input shape, so handlers read as
//! parse → call the core → render. Every failure is a 4xx with a message.

use lablink_core::domain::Hostname;
use lambda_http::{Request, RequestExt};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Bodies of forms and VM reports.
pub const SMALL_BODY: usize = 16 * 1024;
/// Log batches (`POST /api/vm-logs`); API Gateway itself stops at 10 MB.
pub const LOG_BODY: usize = 1024 * 1024;

/// The body, refused when over `limit`.
pub fn body(req: &Request, limit: usize) -> Result<&[u8], ApiError> {
    let b: &[u8] = req.body().as_ref();
    if b.len() > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(b)
}

/// A JSON body of type `T`.
pub fn json<T: DeserializeOwned>(req: &Request, limit: usize) -> Result<T, ApiError> {
    let b = body(req, limit)?;
    if b.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A URL-encoded form body of type `T`.
pub fn form<T: DeserializeOwned>(req: &Request, limit: usize) -> Result<T, ApiError> {
    let b = body(req, limit)?;
    serde_urlencoded::from_bytes(b).map_err(|e| ApiError::bad_request(format!("invalid form: {e}")))
}

/// A form, or (`Content-Type: application/json`) a JSON object of the same fields, where
/// a number or boolean stands for its text and a list of strings for its lines (so
/// scripts need not quote numbers). `null` is an absent field; any other value is 400.
pub fn form_or_json<T: DeserializeOwned>(req: &Request, limit: usize) -> Result<T, ApiError> {
    let is_json = req
        .headers()
        .get(lambda_http::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return form(req, limit);
    }
    use serde_json::Value;
    let Value::Object(fields) = json::<Value>(req, limit)? else {
        return Err(ApiError::bad_request("expected a JSON object"));
    };
    let mut text = serde_json::Map::new();
    for (k, v) in fields {
        let v = match v {
            Value::Null => continue,
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad_request(format!("{k} must be a list of strings")))?
                .join("\n"),
            Value::Object(_) => return Err(ApiError::bad_request(format!("{k} has the wrong type"))),
        };
        text.insert(k, Value::String(v));
    }
    serde_json::from_value(Value::Object(text))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A path parameter: from API Gateway's `pathParameters`, else the last path segment
/// (for routes with one trailing `{param}`, as mounted by the local runner).
pub fn path_param(req: &Request, name: &str) -> Option<String> {
    if let Some(v) = req.path_parameters_ref().and_then(|p| p.first(name)) {
        return Some(v.to_owned());
    }
    let path = req.uri().path();
    let last = path.rsplit('/').next().filter(|s| !s.is_empty())?;
    Some(percent_decode(last))
}

/// A path parameter as API Gateway names it (no fallback to the path's last segment).
pub fn path_param_named(req: &Request, name: &str) -> Option<String> {
    req.path_parameters_ref()
        .and_then(|p| p.first(name))
        .map(str::to_owned)
}

/// The `{name}` segment of `pattern` (a route's path, e.g. `/api/seat/{token}/code`) in
/// the request's path: API Gateway's path parameter when it set one, else the segment
/// at the same position (the local runner's requests carry no path parameters).
pub fn path_param_in(req: &Request, pattern: &str, name: &str) -> Option<String> {
    if let Some(v) = path_param_named(req, name) {
        return Some(v);
    }
    let wanted = format!("{{{name}}}");
    let at = pattern.split('/').position(|seg| seg == wanted)?;
    let seg = req.uri().path().split('/').nth(at)?;
    (!seg.is_empty()).then(|| percent_decode(seg))
}

/// The `{hostname}` of the path.
pub fn path_hostname(req: &Request) -> Result<Hostname, ApiError> {
    let raw = path_param(req, "hostname").ok_or_else(|| ApiError::bad_request("the path has no hostname"))?;
    Hostname::parse(&raw).map_err(|e| ApiError::bad_request(format!("invalid hostname in path: {e}")))
}

/// The `{id}` of the path: a job id.
pub fn path_job_id(req: &Request) -> Result<lablink_core::domain::JobId, ApiError> {
    let raw = path_param(req, "id").ok_or_else(|| ApiError::bad_request("the path has no job id"))?;
    lablink_core::domain::JobId::parse(&raw).map_err(ApiError::bad_request)
}

/// A query-string parameter parsed as `T`; absent → `None`, bad → 400.
pub fn query<T: std::str::FromStr>(req: &Request, name: &str) -> Result<Option<T>, ApiError> {
    let params = req.query_string_parameters();
    match params.first(name) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("query parameter {name} is invalid: {v:?}"))),
    }
}

/// Whether the caller wants HTML (a browser form) rather than JSON (a script).
pub fn wants_html(req: &Request) -> bool {
    use lambda_http::http::header;
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let accept_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    form || accept_html
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_edges() {
        assert_eq!(percent_decode("vm-1"), "vm-1");
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
