//! Each route's BUILT binary, run as Lambda runs it: under a Runtime API (a small one
//! served by this test) that hands it its `events/<function>/valid.json` fixture. The
//! binary must start with no network work, poll `/next`, and post the API Gateway v2
//! response we expect.
//!
//! The binaries come from `cargo build --workspace --bins` (scripts/test runs it
//! first); the release artifacts of `cargo lambda build --release` run the same way.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use lablink_core::credential::Secret;
use lablink_core::db::vms;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_testkit::TestDb;
use lablink_web::Route;
use tokio::sync::mpsc;

#[derive(Clone)]
struct Rapi {
    event: Arc<Mutex<Option<String>>>,
    done: mpsc::UnboundedSender<(String, String)>,
}

async fn next(State(s): State<Rapi>) -> impl IntoResponse {
    let event = s.event.lock().unwrap().take();
    match event {
        Some(body) => {
            let mut h = HeaderMap::new();
            h.insert(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_static("rapi-test-1"),
            );
            let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            h.insert(
                "lambda-runtime-deadline-ms",
                HeaderValue::from_str(&deadline.to_string()).unwrap(),
            );
            h.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:test"),
            );
            (StatusCode::OK, h, body).into_response()
        }
        // One invocation per test: park the runtime's next poll until we kill it.
        None => {
            std::future::pending::<()>().await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn response(State(s): State<Rapi>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = s.done.send((format!("response:{id}"), body));
    StatusCode::ACCEPTED
}

async fn error(State(s): State<Rapi>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = s.done.send((format!("error:{id}"), body));
    StatusCode::ACCEPTED
}

fn binary(function: &str) -> PathBuf {
    // target/debug/deps/runtime_api-<hash> → target/debug/<function>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(function)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_function_answers_its_fixture_under_the_runtime_api() {
    let db = TestDb::new().await;
    let client = db.client().await;
    vms::create_vms(
        &client,
        &[vms::NewVm {
            hostname: Hostname::parse("lablink-vm-test-1").unwrap(),
            instance_id: None,
            credential_hash: Some(
                Secret::presented("fixture-credential-of-lablink-vm-test-1-not-a-secret").hash(),
            ),
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await
    .unwrap();
    let events = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events");

    for route in Route::ALL {
        let function = route.function_name();
        let bin = binary(function);
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
        let event = std::fs::read_to_string(events.join(function).join("valid.json")).unwrap();

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let mut child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", function)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("DATABASE_URL", &db.url)
            .env("LABLINK_SESSION_KEY", "ab".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

        let got = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
        let _ = child.kill().await;
        server.abort();
        let (kind, body) = got
            .unwrap_or_else(|_| panic!("{function}: no answer within 30 s"))
            .unwrap();
        assert_eq!(kind, "response:rapi-test-1", "{function}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let status = v["statusCode"].as_u64().unwrap();
        assert!((200..300).contains(&status), "{function}: {status} {body}");
    }
}

#[tokio::test]
async fn a_function_with_a_bad_setting_exits_with_a_one_line_reason() {
    let bin = binary("health");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    let out = tokio::process::Command::new(&bin)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("PGPORT", "not-a-port")
        .env("LABLINK_LEGACY_VM_AUTH", "sometimes")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    for needle in [
        "PGHOST is not set",
        "PGPORT is invalid",
        "LABLINK_LEGACY_VM_AUTH is invalid",
    ] {
        assert!(last.contains(needle), "{needle:?} not in {last:?}");
    }
}
