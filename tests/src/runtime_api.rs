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

/// Everything a function needs to answer its `events/<function>/valid.json` fixture: a
/// database with the fixture VM, enrollment and exports, the fixture admin, and (per
/// function, so one's fleet lock never meets another's) a jobs table on moto_server
/// holding the fixture jobs. Used by the Runtime-API test and by `lambda-report`.
pub struct FixtureWorld {
    pub db: lablink_testkit::TestDb,
    admin_hash: String,
}

impl FixtureWorld {
    pub async fn new() -> Self {
        use lablink_core::credential::Secret;
        use lablink_core::domain::{Hostname, VmStatus};
        use lablink_testkit::fixtures;
        let db = lablink_testkit::TestDb::new().await;
        let client = db.client().await;
        lablink_db::vms::create_vms(
            &client,
            &[1, 2].map(|n| lablink_db::vms::NewVm {
                hostname: Hostname::parse(&format!("lablink-vm-test-{n}")).expect("a valid hostname"),
                instance_id: None,
                credential_hash: Some(
                    Secret::presented(&format!("fixture-credential-of-lablink-vm-test-{n}-not-a-secret"))
                        .hash(),
                ),
                status: VmStatus::Running,
                provision: None,
            }),
        )
        .await
        .expect("the fixture VMs");
        fixtures::seed_enrollment(&client).await;
        fixtures::seed_open_export(&client).await;
        fixtures::seed_seat(&client).await;
        fixtures::seed_admin_session(&client).await;
        Self {
            db,
            admin_hash: fixtures::admin_password_hash().to_owned(),
        }
    }

    /// A fresh jobs table `name` on moto holding the fixture jobs.
    pub async fn jobs_table(name: &str) {
        let client = lablink_ops::dynamo::Client::new(&lablink_testkit::moto::sdk_config());
        lablink_ops::dynamo::create_table(&client, name)
            .await
            .expect("a jobs table on moto");
        let store = lablink_ops::dynamo::DynamoJobStore::new(client, name);
        lablink_testkit::fixtures::seed_job(&store).await;
        lablink_testkit::fixtures::seed_done_export(&store).await;
    }

    /// The environment of `function` (an HTTP route's), as the infrastructure gives it:
    /// the database, the jobs table (its own, `jobs-<variant>-<function>`, created here)
    /// and the export bucket only when its route reaches them (the CDK app sets those variables with the
    /// grants), so a function that works here works with no more access than it has.
    pub async fn route_env(&self, variant: &str, function: &str) -> Vec<(String, String)> {
        use lablink_testkit::fixtures;
        let reaches = lablink_web::routes::by_function(function)
            .unwrap_or_else(|| panic!("no route for {function}"))
            .reaches;
        let mut env: Vec<(String, String)> = [
            ("LABLINK_SESSION_KEY", fixtures::SESSION_KEY),
            ("LABLINK_ADMIN_USER", fixtures::ADMIN_USER),
            ("LABLINK_ADMIN_PASSWORD_HASH", self.admin_hash.as_str()),
            ("LABLINK_DEPLOYMENT", fixtures::DEPLOYMENT),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // The database only for functions whose route reaches it, as the CDK app gives it:
        // a function that needs one without saying so fails here, not on AWS.
        if reaches.db {
            env.push(("DATABASE_URL".into(), self.db.url.clone()));
        }
        if reaches.jobs_table {
            let table = format!("jobs-{variant}-{function}");
            Self::jobs_table(&table).await;
            env.push(("LABLINK_JOBS_TABLE".into(), table));
        }
        if reaches.export_bucket.is_some() {
            // Presigning a download link needs no object: the fixture's is never fetched.
            env.push(("LABLINK_EXPORT_BUCKET".into(), "lablink-exports-fixture".into()));
        }
        env.extend(
            lablink_testkit::moto::env()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    }
}
