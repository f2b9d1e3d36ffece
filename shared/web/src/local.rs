//! Every route mounted at its API Gateway path on one plain HTTP server (feature
//! `local`): the local runner and the end-to-end tests serve the same handlers the
//! Lambdas run, with API Gateway's request shape rebuilt from the HTTP request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::Request as AxumRequest;
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{MethodFilter, on};
use lambda_http::RequestExt;
use lambda_http::http::StatusCode;

use crate::AppState;
use crate::request::LOG_BODY;
use crate::respond::json;
use crate::routes::{self, Route};

/// A router serving every [`Route`] (unknown paths: 404 JSON; known path, other method: 405).
pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new();
    for route in routes::ALL {
        let filter = MethodFilter::try_from(route.verb.method()).expect("routes use standard methods");
        let path = route.path;
        let st = Arc::clone(&state);
        r = r.route(
            path,
            on(filter, move |req: AxumRequest| {
                let st = Arc::clone(&st);
                async move { serve(route, &st, req).await }
            }),
        );
    }
    r.fallback(|| async {
        to_axum(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "no such route" }),
        ))
    })
}

async fn serve(route: Route, state: &AppState, req: AxumRequest) -> AxumResponse {
    let (parts, body) = req.into_parts();
    // One byte over the largest accepted body is enough for the handler to answer 413.
    let bytes = match axum::body::to_bytes(body, LOG_BODY + 1).await {
        Ok(b) => b,
        Err(_) => {
            return to_axum(json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({ "error": format!("the request body is over {LOG_BODY} bytes") }),
            ));
        }
    };
    let query: HashMap<String, Vec<String>> = parts
        .uri
        .query()
        .map(|q| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .unwrap_or_default()
                .into_iter()
                .fold(HashMap::new(), |mut m, (k, v)| {
                    m.entry(k).or_insert_with(Vec::new).push(v);
                    m
                })
        })
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        lambda_http::Body::Binary(bytes.to_vec())
    };
    // API Gateway's sourceIp, from the socket (login throttling keys on it).
    let source_ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let mut ctx = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext::default();
    ctx.http.source_ip = source_ip;
    let context = lambda_http::request::RequestContext::ApiGatewayV2(ctx);
    let req = lambda_http::http::Request::from_parts(parts, body)
        .with_query_string_parameters(query)
        .with_request_context(context);
    let mut resp = route.handle(state, req).await;
    // A download of a local file: streamed from disk, never held in memory.
    if let Some(path) = resp.headers_mut().remove(crate::local_file::HEADER) {
        let path = std::path::PathBuf::from(String::from_utf8_lossy(path.as_bytes()).into_owned());
        return match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let (mut parts, _) = resp.into_parts();
                if let Ok(meta) = file.metadata().await {
                    parts
                        .headers
                        .insert(lambda_http::http::header::CONTENT_LENGTH, meta.len().into());
                }
                let body =
                    AxumBody::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
                AxumResponse::from_parts(parts, body)
            }
            Err(e) => to_axum(json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": format!("the file is gone: {e}") }),
            )),
        };
    }
    to_axum(resp)
}

fn to_axum(resp: lambda_http::Response<lambda_http::Body>) -> AxumResponse {
    let (parts, body) = resp.into_parts();
    let bytes: Vec<u8> = match body {
        lambda_http::Body::Empty => Vec::new(),
        lambda_http::Body::Text(t) => t.into_bytes(),
        lambda_http::Body::Binary(b) => b,
        _ => Vec::new(),
    };
    AxumResponse::from_parts(parts, AxumBody::from(bytes)).into_response()
}

/// `router` with the VMs' long-polls (`POST /vm_startup`, `POST /vm_export`) passed to the
/// holder at `holder` (`http://host:port`), as API Gateway passes them behind one URL:
/// the body, the credential and `?wait=`.
pub fn with_holder(router: Router, holder: &str) -> Router {
    let http = reqwest::Client::new();
    let mut app = router;
    for path in ["/vm_startup", "/vm_export"] {
        let url = format!("{holder}{path}");
        let http = http.clone();
        app = app.route(
            path,
            axum::routing::post(move |req: AxumRequest| {
                let (http, url) = (http.clone(), url.clone());
                async move { pass_to_holder(&http, &url, req).await }
            }),
        );
    }
    app
}

async fn pass_to_holder(http: &reqwest::Client, url: &str, req: AxumRequest) -> AxumResponse {
    use axum::response::IntoResponse;
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let auth = req.headers().get("authorization").cloned();
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response(),
    };
    let mut r = http
        .post(format!("{url}{query}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    match r.send().await {
        Ok(resp) => {
            let status = axum::http::StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            let ct = resp.headers().get("content-type").cloned();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = (status, bytes).into_response();
            if let Some(ct) = ct
                && let Ok(v) = axum::http::HeaderValue::from_bytes(ct.as_bytes())
            {
                out.headers_mut().insert("content-type", v);
            }
            out
        }
        Err(e) => (
            axum::http::StatusCode::BAD_GATEWAY,
            format!("holder unreachable: {e}"),
        )
            .into_response(),
    }
}
