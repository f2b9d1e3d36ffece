//! Every POST route, in-process against a real Postgres, fed random bodies, truncated
//! bodies and its valid fixture with fields replaced by random JSON values (proptest):
//! it never answers 5xx, never panics, and a refusal (4xx) changes nothing. Each route
//! runs as its manifest database user, on a database set up as a deployment's.

use std::path::PathBuf;

use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::vms;
use lablink_testkit::{TestDb, fixtures};
use lablink_web::auth::SessionKey;
use lablink_web::routes::{self, Verb};
use lablink_web::state::{AdminAuth, AdminSource};
use lablink_web::{AppConfig, AppState, Body, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

fn fixture(function: &str) -> Request {
    let path = events_dir().join(function).join("valid.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifest's database user of `function`.
fn db_user(function: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../functions/manifest.json");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    m["http"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["function"] == function)
        .and_then(|e| e["db_user"].as_str())
        .map(str::to_owned)
}

/// The fixtures' world: the fixture VMs, seat, enrollment, job store and admin session;
/// one state logged in as `lablink_app`, one as `lablink_public`.
async fn world() -> (
    TestDb,
    AppState,
    AppState,
    tokio_postgres::Client,
    tempfile::TempDir,
) {
    let db = TestDb::with_roles().await;
    let config = AppConfig {
        db: db.config_as(lablink_db::roles::APP),
        legacy_vm_auth: false,
        paused: false,
        admin: AdminSource::Env(std::sync::Arc::new(
            AdminAuth::new(
                fixtures::ADMIN_USER,
                fixtures::admin_password_hash(),
                SessionKey::from_hex(fixtures::SESSION_KEY).unwrap(),
            )
            .unwrap(),
        )),
        forwarder_token_hash: None,
        jobs_table: None,
        max_vms: 50,
        deployment: lablink_core::domain::DeploymentName::parse(fixtures::DEPLOYMENT).unwrap(),
        export_bucket: None,
        vm: Default::default(),
        gate: Default::default(),
        fleet_hours: 12,
        fleet_notice: chrono::Duration::minutes(15),
        admin_cidrs: None,
        admin_secret_ttl: std::time::Duration::from_secs(60),
    };
    let client = db.client().await;
    fixtures::seed_enrollment(&client).await;
    fixtures::seed_admin_session(&client).await;
    fixtures::seed_seat(&client).await;
    let store: std::sync::Arc<dyn lablink_ops::JobStore> = std::sync::Arc::new(
        lablink_ops::pg::PgJobStore::new(std::sync::Arc::new(lablink_db::Db::new(db.config.clone()))),
    );
    fixtures::seed_job(store.as_ref()).await;
    fixtures::seed_exports(&client, store.as_ref()).await;
    let new = [1, 2].map(|n| vms::NewVm {
        hostname: Hostname::parse(&format!("lablink-vm-test-{n}")).unwrap(),
        instance_id: None,
        credential_hash: Some(
            Secret::presented(&format!("fixture-credential-of-lablink-vm-test-{n}-not-a-secret")).hash(),
        ),
        status: VmStatus::Running,
        provision: None,
    });
    vms::create_vms(&client, &new).await.unwrap();
    let exports = tempfile::tempdir().unwrap();
    let storage = lablink_export::LocalStorage {
        dir: exports.path().to_path_buf(),
        base_url: "http://127.0.0.1:9".into(),
        key: vec![7; 32],
    };
    let public = AppState::new(AppConfig {
        db: db.config_as(lablink_db::roles::PUBLIC),
        ..config.clone()
    });
    let state = AppState::new(config)
        .with_local_jobs(store, "tests")
        .with_export_storage(std::sync::Arc::new(storage))
        .with_aws(lablink_testkit::moto::sdk_config());
    (db, state, public, client, exports)
}

/// Everything a refusal must leave untouched: every table the routes write, except the
/// login throttle's counts, whose whole point is to record refused attempts.
async fn snapshot(c: &tokio_postgres::Client) -> String {
    let mut out = String::new();
    for table in [
        "vms",
        "vm_log_lines",
        "ops_jobs",
        "ops_locks",
        "ops_settings",
        "seat_tokens",
        "vm_actions",
        "workshop_settings",
        "exports",
        "export_vms",
        "vm_enrollment_secrets",
        "vm_log_stats",
    ] {
        let row = c
            .query_one(
                &format!("SELECT coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM {table} t"),
                &[],
            )
            .await
            .unwrap();
        out.push_str(row.get::<_, &str>(0));
        out.push('#');
    }
    let live: i64 = c
        .query_one("SELECT count(*) FROM admin_sessions WHERE ended_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    out.push_str(&live.to_string());
    // New seats counted per address (a refusal may leave a row at the count it had).
    let seats: i64 = c
        .query_one("SELECT coalesce(sum(requests), 0) FROM seat_request_windows", &[])
        .await
        .unwrap()
        .get(0);
    out.push_str(&format!("#{seats}"));
    out
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::String),
        "[a-z0-9@./:-]{0,300}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::hash_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies for a route whose valid body is `valid`: random bytes, a truncation of it,
/// and (for JSON) it with one field replaced, or for a form one value replaced.
fn bodies(valid: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = valid.len();
    let truncated = {
        let v = valid.clone();
        (0..=len).prop_map(move |n| v[..n].to_vec())
    };
    let random = proptest::collection::vec(any::<u8>(), 0..1024);
    match serde_json::from_slice::<serde_json::Value>(&valid) {
        Ok(serde_json::Value::Object(fields)) if !fields.is_empty() => {
            let keys: Vec<String> = fields.keys().cloned().collect();
            let mutated = (0..keys.len(), json_value()).prop_map(move |(i, value)| {
                let mut m = fields.clone();
                m.insert(keys[i].clone(), value);
                serde_json::to_vec(&m).unwrap()
            });
            prop_oneof![
                random,
                truncated,
                mutated,
                json_value().prop_map(|v| serde_json::to_vec(&v).unwrap())
            ]
            .boxed()
        }
        _ => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&valid).unwrap_or_default();
            if pairs.is_empty() {
                return prop_oneof![random, truncated].boxed();
            }
            let mutated = (0..pairs.len(), prop_oneof![".{0,64}", "[\\x00-\\x7f]{0,600}"]).prop_map(
                move |(i, value)| {
                    let mut p = pairs.clone();
                    p[i].1 = value;
                    serde_urlencoded::to_string(&p).unwrap().into_bytes()
                },
            );
            prop_oneof![random, truncated, mutated].boxed()
        }
    }
}

#[test]
fn every_post_route_answers_random_and_truncated_bodies_with_4xx_and_changes_nothing_on_refusal() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_db, app, public, client, _exports) = rt.block_on(world());
    let mut checked = 0;
    for route in routes::ALL.iter().filter(|r| r.verb == Verb::Post) {
        let valid = fixture(route.function).body().as_ref().to_vec();
        let state = match db_user(route.function).as_deref() {
            Some(lablink_db::roles::PUBLIC) => &public,
            _ => &app,
        };
        let mut runner = TestRunner::new(Config {
            cases: 48,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&bodies(valid), |body| {
                let mut req = fixture(route.function);
                *req.body_mut() = Body::from(body.clone());
                let before = rt.block_on(snapshot(&client));
                let resp = rt.block_on(route.handle(state, req));
                let status = resp.status();
                let shown = String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>();
                prop_assert!(
                    status.as_u16() < 500,
                    "{}: {status} for {shown:?}: {}",
                    route.function,
                    String::from_utf8_lossy(resp.body().as_ref())
                );
                if status.is_client_error() {
                    let after = rt.block_on(snapshot(&client));
                    prop_assert!(
                        after == before,
                        "{}: a {status} for {shown:?} changed data",
                        route.function
                    );
                }
                // Each job fixture starts from a free fleet.
                rt.block_on(client.execute("DELETE FROM ops_locks", &[])).unwrap();
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", route.function));
        checked += 1;
    }
    assert!(checked >= 17, "{checked} POST routes");
}
