//! A minimal Lambda Runtime API, enough to run a function binary as Lambda does: it
//! hands out one event on `/next`, takes the response (or error), and parks the
//! runtime's next poll.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::mpsc;

pub const REQUEST_ID: &str = "rapi-test-1";

#[derive(Clone)]
struct Rapi {
    event: Arc<Mutex<Option<String>>>,
    done: mpsc::UnboundedSender<(String, String)>,
}

async fn next(State(s): State<Rapi>) -> impl IntoResponse {
    let event = s.event.lock().unwrap_or_else(|p| p.into_inner()).take();
    match event {
        Some(body) => {
            let mut h = HeaderMap::new();
            h.insert(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_static(REQUEST_ID),
            );
            let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            h.insert(
                "lambda-runtime-deadline-ms",
                HeaderValue::from_str(&deadline.to_string()).expect("digits"),
            );
            h.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:test"),
            );
            (StatusCode::OK, h, body).into_response()
        }
        // One invocation per run: park the runtime's next poll until it is killed.
        None => {
            std::future::pending::<()>().await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn response(State(s): State<Rapi>, UrlPath(id): UrlPath<String>, body: String) -> StatusCode {
    let _ = s.done.send((format!("response:{id}"), body));
    StatusCode::ACCEPTED
}

async fn error(State(s): State<Rapi>, UrlPath(id): UrlPath<String>, body: String) -> StatusCode {
    let _ = s.done.send((format!("error:{id}"), body));
    StatusCode::ACCEPTED
}

/// What one invocation produced.
#[derive(Debug)]
pub struct Invocation {
    /// `response:<id>` or `error:<id>`.
    pub kind: String,
    pub body: String,
    /// From spawning the process to its response arriving (a cold start plus one request).
    pub elapsed: Duration,
}

/// Start `bin` under a fresh Runtime API, hand it `event`, return what it answered.
pub async fn invoke_once(
    bin: &Path,
    function: &str,
    event: String,
    env: &[(&str, &str)],
) -> anyhow::Result<Invocation> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let state = Rapi {
        event: Arc::new(Mutex::new(Some(event))),
        done: tx,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let start = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    let elapsed = start.elapsed();
    let _ = child.kill().await;
    server.abort();
    let (kind, body) = got
        .with_context(|| format!("{function}: no answer within 30 s"))?
        .context("the runtime API stopped")?;
    Ok(Invocation { kind, body, elapsed })
}
