//! Each route's BUILT binary, run as Lambda runs it: under a Runtime API (a small one
//! served by this test) that hands it its `events/<function>/valid.json` fixture. The
//! binary must start with no network work, poll `/next`, and post the API Gateway v2
//! response we expect.
//!
//! The debug binaries come from `cargo build --workspace --bins`; the cargo-lambda
//! artifacts (scripts/build-lambdas; scripts/test builds them with the `lambda-test`
//! profile and sets `LABLINK_LAMBDA_ARTIFACTS=1`) are run the same way, and that test
//! fails, saying why, when they were not built by this run.

use std::path::PathBuf;

use lablink_e2e::runtime_api::{FixtureWorld, REQUEST_ID, invoke_once};
use lablink_e2e::{aws_clients_linked, lambda_artifact, repo_root, workspace_bin};
use lablink_testkit::{TestDb, fixtures, moto};
use lablink_web::routes;

/// Routes whose crate enables no `lablink-web` feature (participant and VM routes) link
/// no AWS service client; the dashboard, which uses the job store, STS and the admin
/// secret, links those (so the check can see a client when one is there).
fn only_what_each_route_uses_is_linked(bin: impl Fn(&str) -> PathBuf) {
    for route in routes::ALL.iter().filter(|r| r.features.is_empty()) {
        let linked = aws_clients_linked(&bin(route.function)).unwrap();
        assert!(linked.is_empty(), "{} links {linked:?}", route.function);
    }
    let home = aws_clients_linked(&bin("admin-home")).unwrap();
    for client in ["DynamoDB", "STS", "Secrets Manager"] {
        assert!(home.contains(&client), "admin-home links {home:?}, not {client}");
    }
    assert!(
        !home.contains(&"S3") && !home.contains(&"EC2"),
        "admin-home links {home:?}"
    );
}

async fn every_function_answers(variant: &str, bin: impl Fn(&str) -> PathBuf) {
    let world = FixtureWorld::new().await;
    for route in routes::ALL {
        let function = route.function;
        let env = world.route_env(variant, function).await;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bin = bin(function);
        assert!(bin.exists(), "{} is missing", bin.display());
        let event =
            std::fs::read_to_string(repo_root().join("events").join(function).join("valid.json")).unwrap();
        let got = invoke_once(&bin, function, event, &env).await.unwrap();
        assert_eq!(
            got.kind,
            format!("response:{REQUEST_ID}"),
            "{function}: {}",
            got.body
        );
        let v: serde_json::Value = serde_json::from_str(&got.body).unwrap();
        let status = v["statusCode"].as_u64().unwrap();
        assert!((200..400).contains(&status), "{function}: {status} {}", got.body);
    }
    provisioner_answers(variant, &bin("provisioner"), &world.db).await;
}

/// The provisioner, fed its stream fixture: it reads the (finished) fixture job from
/// DynamoDB on moto and leaves it alone.
async fn provisioner_answers(variant: &str, bin: &std::path::Path, db: &TestDb) {
    let table = format!("jobs-{variant}-provisioner");
    FixtureWorld::jobs_table(&table).await;
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("LABLINK_JOBS_TABLE", table.as_str()),
        ("LABLINK_DEPLOYMENT", fixtures::DEPLOYMENT),
        ("LABLINK_AMI_ID", "ami-12c6146b"),
        ("LABLINK_INSTANCE_TYPE", "g4dn.xlarge"),
        ("LABLINK_API_URL", "https://api.example"),
        ("LABLINK_DAEMON_BUCKET", "cdk-assets"),
        ("LABLINK_DAEMON_KEY", "daemon.bin"),
        (
            "LABLINK_DAEMON_SHA256",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    ];
    let moto_env = moto::env();
    env.extend(moto_env.iter().map(|(k, v)| (*k, v.as_str())));
    let event = std::fs::read_to_string(repo_root().join("events/provisioner/valid.json")).unwrap();
    let got = invoke_once(bin, "provisioner", event, &env).await.unwrap();
    assert_eq!(
        got.kind,
        format!("response:{REQUEST_ID}"),
        "provisioner: {}",
        got.body
    );
    let v: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(v["jobs"][0]["job"], fixtures::JOB, "{v}");
    assert!(
        v["jobs"][0]["outcome"]
            .as_str()
            .unwrap()
            .contains("already finished"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_debug_binary_answers_its_fixture_under_the_runtime_api() {
    let bin = |f: &str| workspace_bin(f).unwrap_or_else(|e| panic!("{e}"));
    only_what_each_route_uses_is_linked(bin);
    every_function_answers("debug", bin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cargo_lambda_artifact_answers_its_fixture_under_the_runtime_api() {
    lablink_e2e::require_lambda_artifacts();
    let bin = |f: &str| lambda_artifact(f).unwrap();
    only_what_each_route_uses_is_linked(bin);
    every_function_answers("artifact", bin).await;
}

#[tokio::test]
async fn a_function_with_a_bad_setting_exits_with_a_one_line_reason() {
    let bin = workspace_bin("health").unwrap();
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
