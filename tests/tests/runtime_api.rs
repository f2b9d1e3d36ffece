//! Each route's BUILT binary, run as Lambda runs it: under a Runtime API (a small one
//! served by this test) that hands it its `events/<function>/valid.json` fixture. The
//! binary must start with no network work, poll `/next`, and post the API Gateway v2
//! response we expect.
//!
//! The debug binaries come from `cargo build --workspace --bins`; the release artifacts
//! of `cargo lambda build --release` (scripts/build-lambdas) are run the same way when
//! `LABLINK_LAMBDA_ARTIFACTS=1` (scripts/test sets it after building them).

use std::path::PathBuf;

use lablink_core::credential::Secret;
use lablink_core::db::vms;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_e2e::runtime_api::{REQUEST_ID, invoke_once};
use lablink_e2e::{lambda_artifact, repo_root, workspace_bin};
use lablink_testkit::{TestDb, fixtures, moto};
use lablink_web::Route;

async fn fixture_db() -> TestDb {
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
    db
}

/// A DynamoDB jobs table on moto holding the fixture job.
async fn jobs_table(name: &str) {
    let client = lablink_ops::dynamo::Client::new(&moto::sdk_config());
    lablink_ops::dynamo::create_table(&client, name).await.unwrap();
    let store = lablink_ops::dynamo::DynamoJobStore::new(client, name);
    fixtures::seed_job(&store).await;
    fixtures::seed_done_export(&store).await;
}

async fn every_function_answers(variant: &str, bin: impl Fn(&str) -> PathBuf) {
    let db = fixture_db().await;
    fixtures::seed_enrollment(&db.client().await).await;
    fixtures::seed_open_export(&db.client().await).await;
    let hash = lablink_web::auth::hash_password(fixtures::ADMIN_PASSWORD);
    let moto_env = moto::env();
    for route in Route::ALL {
        let function = route.function_name();
        // Each function its own table: job fixtures must not find another's fleet lock.
        let table = format!("jobs-{variant}-{function}");
        jobs_table(&table).await;
        let mut env: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", db.url.as_str()),
            ("LABLINK_SESSION_KEY", fixtures::SESSION_KEY),
            ("LABLINK_ADMIN_USER", fixtures::ADMIN_USER),
            ("LABLINK_ADMIN_PASSWORD_HASH", hash.as_str()),
            ("LABLINK_DEPLOYMENT", fixtures::DEPLOYMENT),
            ("LABLINK_JOBS_TABLE", table.as_str()),
            // Presigning a download link needs no object: the fixture's is never fetched.
            ("LABLINK_EXPORT_BUCKET", "lablink-exports-fixture"),
        ];
        env.extend(moto_env.iter().map(|(k, v)| (*k, v.as_str())));
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
    provisioner_answers(variant, &bin("provisioner"), &db).await;
}

/// The provisioner, fed its stream fixture: it reads the (finished) fixture job from
/// DynamoDB on moto and leaves it alone.
async fn provisioner_answers(variant: &str, bin: &std::path::Path, db: &TestDb) {
    let table = format!("jobs-{variant}-provisioner");
    jobs_table(&table).await;
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("LABLINK_JOBS_TABLE", table.as_str()),
        ("LABLINK_DEPLOYMENT", fixtures::DEPLOYMENT),
        ("LABLINK_AMI_ID", "ami-12c6146b"),
        ("LABLINK_INSTANCE_TYPE", "g4dn.xlarge"),
        ("LABLINK_API_URL", "https://api.example"),
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
    every_function_answers("debug", |f| workspace_bin(f).unwrap_or_else(|e| panic!("{e}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cargo_lambda_artifact_answers_its_fixture_under_the_runtime_api() {
    if std::env::var("LABLINK_LAMBDA_ARTIFACTS").as_deref() != Ok("1") {
        eprintln!("LABLINK_LAMBDA_ARTIFACTS is not 1: the release artifacts are checked by scripts/test");
        return;
    }
    every_function_answers("release", |f| lambda_artifact(f).unwrap()).await;
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
