//! Every route's handler, called in-process with the API Gateway v2 fixtures of
//! `events/` against a real Postgres.

use std::path::PathBuf;

use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::{roles, vms};
use lablink_testkit::TestDb;
use lablink_testkit::fixtures;
use lablink_web::auth::SessionKey;
use lablink_web::routes::{self, Route};
use lablink_web::state::{AdminAuth, AdminSource};
use lablink_web::{AppConfig, AppState, Body, Request, Response};
use lambda_http::http::{HeaderValue, header};

const HOST: &str = "lablink-vm-test-1";
const OTHER: &str = "lablink-vm-test-2";
const TOKEN: &str = "fixture-credential-of-lablink-vm-test-1-not-a-secret";
const OTHER_TOKEN: &str = "fixture-credential-of-lablink-vm-test-2-not-a-secret";
const FORWARDER_TOKEN: &str = "forwarder-token-for-tests";
const SESSION_KEY: &str = "abababababababababababababababababababababababababababababababab";

struct Fixture {
    db: TestDb,
    /// Logged in as `lablink_app`: the VM and admin routes' database user.
    state: AppState,
    /// Logged in as `lablink_public`: the routes anyone may call.
    public: AppState,
    /// The server's admin user: seeds and inspects.
    client: tokio_postgres::Client,
    /// The export folder (the local runner's storage), holding the fixture export's zip.
    _exports: tempfile::TempDir,
}

/// The fixture admin's argon2 hash (made once: hashing is deliberately slow).
fn admin_hash() -> &'static str {
    fixtures::admin_password_hash()
}

fn admin_source() -> AdminSource {
    AdminSource::Env(std::sync::Arc::new(
        AdminAuth::new(
            fixtures::ADMIN_USER,
            admin_hash(),
            SessionKey::from_hex(SESSION_KEY).unwrap(),
        )
        .unwrap(),
    ))
}

/// A database set up as a deployment's (roles, migrations, grants); each route runs as
/// its manifest's `db_user` ([`Fixture::state_for`]).
async fn setup(legacy: bool) -> Fixture {
    let db = TestDb::with_roles().await;
    let config = AppConfig {
        db: db.config_as(roles::APP),
        legacy_vm_auth: legacy,
        paused: false,
        admin: admin_source(),
        forwarder_token_hash: Some(Secret::presented(FORWARDER_TOKEN).hash()),
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
    let store: std::sync::Arc<dyn lablink_ops::JobStore> = std::sync::Arc::new(
        lablink_ops::pg::PgJobStore::new(std::sync::Arc::new(lablink_db::Db::new(db.config_as(roles::APP)))),
    );
    fixtures::seed_job(store.as_ref()).await;
    fixtures::seed_exports(&client, store.as_ref()).await;
    fixtures::seed_seat(&client).await;
    let exports = tempfile::tempdir().unwrap();
    let storage = lablink_export::LocalStorage {
        dir: exports.path().to_path_buf(),
        base_url: "http://127.0.0.1:9".into(),
        key: vec![7; 32],
    };
    let zip = storage.zip_path(fixtures::DONE_EXPORT, fixtures::DONE_EXPORT_ZIP);
    std::fs::create_dir_all(zip.parent().unwrap()).unwrap();
    std::fs::write(&zip, b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
    let new = [(HOST, TOKEN), (OTHER, OTHER_TOKEN)].map(|(h, t)| vms::NewVm {
        hostname: Hostname::parse(h).unwrap(),
        instance_id: None,
        credential_hash: Some(Secret::presented(t).hash()),
        status: VmStatus::Running,
        provision: None,
    });
    vms::create_vms(&client, &new).await.unwrap();
    let public = AppState::new(AppConfig {
        db: db.config_as(roles::PUBLIC),
        ..config.clone()
    });
    Fixture {
        public,
        state: AppState::new(config)
            .with_local_jobs(store, "tests")
            .with_export_storage(std::sync::Arc::new(storage))
            .with_aws(lablink_testkit::moto::sdk_config()),
        db,
        client,
        _exports: exports,
    }
}

impl Fixture {
    /// The state logged in as `function`'s database user in functions/manifest.json.
    fn state_for(&self, function: &str) -> &AppState {
        match manifest_db_user(function).as_deref() {
            Some(roles::PUBLIC) => &self.public,
            _ => &self.state,
        }
    }
}

fn manifest() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../functions/manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The manifest's `db_user` of `function` (`None` for a function without `db`).
fn manifest_db_user(function: &str) -> Option<String> {
    let m = manifest();
    let entry = m["http"]
        .as_array()
        .unwrap()
        .iter()
        .chain(m["events"].as_array().unwrap())
        .find(|e| e["function"] == function)
        .unwrap_or_else(|| panic!("{function} is not in the manifest"))
        .clone();
    entry["db_user"].as_str().map(str::to_owned)
}

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

fn fixture(function: &str, name: &str) -> Request {
    let path = events_dir().join(function).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn route(function: &str) -> Route {
    routes::by_function(function).unwrap_or_else(|| panic!("no route for {function}"))
}

fn text(r: &Response<Body>) -> String {
    String::from_utf8_lossy(r.body().as_ref()).into_owned()
}

/// Everything a refusal must leave untouched.
async fn snapshot(c: &tokio_postgres::Client) -> String {
    let row = c
        .query_one(
            "SELECT coalesce((SELECT string_agg(v::text, '|' ORDER BY hostname) FROM vms v), '')
                 || (SELECT count(*)::text FROM vm_log_lines)
                 || '|' || (SELECT count(*)::text FROM ops_jobs) || '|' || (SELECT count(*)::text FROM ops_settings)
                 || '|' || (SELECT count(*)::text FROM seat_tokens) || '|' || (SELECT count(*)::text FROM vm_actions)
                 || '|' || coalesce((SELECT string_agg(t::text, '|' ORDER BY token_hash) FROM seat_tokens t), '')
                 || '|' || coalesce((SELECT string_agg(w::text, '|') FROM workshop_settings w), '')
                 || '|' || (SELECT count(*)::text FROM admin_sessions WHERE ended_at IS NULL)
                 || '|' || (SELECT coalesce(sum(requests), 0)::text FROM seat_request_windows)",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn every_fixture_gets_its_expected_answer_and_refusals_change_nothing() {
    let f = setup(false).await;
    let mut functions: Vec<_> = std::fs::read_dir(events_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Not an HTTP route: its CloudWatch events are tested in tests/tests/log_processor.rs.
        .filter(|f| f != "log-processor" && f != "provisioner")
        .collect();
    functions.sort();
    assert_eq!(functions.len(), routes::ALL.len(), "one fixture folder per route");
    for function in functions {
        let route = route(&function);
        let mut names: Vec<String> = std::fs::read_dir(events_dir().join(&function))
            .unwrap()
            .flatten()
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".json")
                    .to_owned()
            })
            .collect();
        names.sort(); // invalid-* before valid
        assert!(
            names.iter().any(|n| n.starts_with("invalid")),
            "{function} has an invalid fixture"
        );
        for name in names {
            let before = snapshot(&f.client).await;
            // As the function's own database user: a grant its statements lack fails here.
            let resp = route
                .handle(f.state_for(&function), fixture(&function, &name))
                .await;
            let status = resp.status();
            if name.starts_with("valid") {
                assert!(
                    status.is_success() || status.is_redirection(),
                    "{function}/{name}: {status} {}",
                    text(&resp)
                );
                // Each job fixture starts from a free fleet (none of them is run here).
                f.client.execute("DELETE FROM ops_locks", &[]).await.unwrap();
            } else {
                assert!(
                    status.is_client_error(),
                    "{function}/{name}: {status} {}",
                    text(&resp)
                );
                assert_eq!(
                    snapshot(&f.client).await,
                    before,
                    "{function}/{name} changed data"
                );
                let body = text(&resp);
                assert!(
                    body.contains("error") || body.contains("role=\"alert\""),
                    "{function}/{name}: no message"
                );
            }
        }
    }
}

/// A `MakeWriter` that appends every log line to one buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// STYLE.md: never log a secret, a CRD code or a PIN. Every route's fixtures (the CRD
/// codes of `request-vm` and `seat-code`, the admin password, the enrollment secret, the
/// stored AWS keys, the VMs' credentials, the session and seat tokens), a fresh seat with
/// its PIN and a fresh code, a room access code saved and typed, and a wrong password run
/// with the JSON subscriber Lambda uses:
/// our own crates at TRACE, everything else at INFO, the level the stack deploys
/// (`RUST_LOG=info`; at DEBUG the AWS SDK may print what it sends and receives).
#[tokio::test]
async fn no_log_line_carries_a_pin_a_code_a_password_or_a_credential() {
    use tracing_subscriber::util::SubscriberInitExt;
    let f = setup(false).await;
    let logs = Captured::default();
    let sink = logs.clone();
    let _guard = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,lablink_web=trace,lablink_db=trace,lablink_core=trace,lablink_ops=trace,lablink_export=trace",
        ))
        .with_writer(move || sink.clone())
        .set_default();

    let mut functions: Vec<_> = std::fs::read_dir(events_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f != "log-processor" && f != "provisioner")
        .collect();
    functions.sort();
    for function in &functions {
        let mut names: Vec<String> = std::fs::read_dir(events_dir().join(function))
            .unwrap()
            .flatten()
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".json")
                    .to_owned()
            })
            .collect();
        names.sort();
        for name in names {
            route(function)
                .handle(f.state_for(function), fixture(function, &name))
                .await;
            f.client.execute("DELETE FROM ops_locks", &[]).await.unwrap();
        }
    }
    // A seat of our own on a VM of its own: its PIN, then a fresh code on it.
    vms::create_vms(
        &f.client,
        &[vms::NewVm {
            hostname: Hostname::parse("lablink-vm-test-3").unwrap(),
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await
    .unwrap();
    let page = text(&request_vm(&f.public, "lin@uni.edu", "4/0AsecretCodeOfLin").await);
    let pin = field(&page, "pin");
    f.client
        .execute(
            "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap();
    let fresh = text(&request_vm(&f.public, "lin@uni.edu", "4/0AfreshCodeOfLin").await);
    let fresh_pin = field(&fresh, "pin");
    // The room's access code: saved by the admin, mistyped, then typed right.
    let r = set_gate(&f, &[("access_code", "room-code-7319"), ("action", "save")]).await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    for typed in ["room-code-7318", "room-code-7319"] {
        request_vm_with(&f, "kim@uni.edu", "4/0AcodeOfKim", typed, "198.51.100.9").await;
    }
    // A wrong password: logged as a failure, without the password.
    let login = route("admin-login-page")
        .handle(&f.state, bare("GET", "/admin/login"))
        .await;
    let cookie = set_cookie(&login, "lablink_login_csrf").unwrap();
    let token = hidden(&text(&login), "csrf");
    let wrong = form_req(
        "/admin/login",
        &format!("user=admin&password=not-the-password-42&csrf={token}"),
        std::slice::from_ref(&cookie),
    );
    assert_eq!(route("admin-login").handle(&f.public, wrong).await.status(), 401);

    let captured = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = captured.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("failed admin login")),
        "the wrong password was logged as such: {captured}"
    );
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
    let secrets = [
        // CRD codes (the fixtures' and ours), as sent and as stored.
        "FixtureCode",
        "4/0AsecretCodeOfLin",
        "4/0AfreshCodeOfLin",
        "4/0AcodeOfKim",
        "oauthredirect",
        // PINs.
        &format!("\"{pin}\""),
        &format!("\"{fresh_pin}\""),
        &format!("pin={pin}"),
        // The room's access code (and the wrong one typed), passwords, keys, tokens.
        "room-code-731",
        fixtures::ADMIN_PASSWORD,
        "not-the-password-42",
        fixtures::ENROLL_SECRET,
        "fixture/secret/key",
        "fixture%2Fsecret",
        TOKEN,
        OTHER_TOKEN,
        FORWARDER_TOKEN,
        SESSION_KEY,
        fixtures::ADMIN_SESSION_ID,
        fixtures::SEAT_TOKEN,
        &token,
    ];
    for secret in secrets {
        if let Some(line) = lines.iter().find(|l| l.contains(secret)) {
            panic!("{secret:?} is in a log line: {line}");
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Caller {
    Nobody,
    OtherVm,
    OwnVm,
    Admin,
    Forwarder,
}

fn as_caller(mut req: Request, who: Caller) -> Request {
    let h = req.headers_mut();
    h.remove(header::AUTHORIZATION);
    h.remove(header::COOKIE);
    match who {
        Caller::Nobody => {}
        Caller::OtherVm => {
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {OTHER_TOKEN}")).unwrap(),
            );
        }
        Caller::OwnVm => {
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
            );
        }
        Caller::Forwarder => {
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {FORWARDER_TOKEN}")).unwrap(),
            );
        }
        Caller::Admin => {
            let key = SessionKey::from_hex(SESSION_KEY).unwrap();
            let v = lablink_web::auth::issue_session(
                &key,
                "admin",
                fixtures::ADMIN_SESSION_ID,
                chrono::Utc::now() + chrono::Duration::hours(1),
            );
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(&format!("lablink_session={v}")).unwrap(),
            );
        }
    }
    req
}

#[tokio::test]
async fn the_auth_matrix_holds_for_every_vm_side_and_admin_read_route() {
    use Caller::*;
    let f = setup(false).await;
    // (function, [(caller, expected status)])
    let writes = [200, 401, 403, 200];
    let matrix: Vec<(&str, Vec<(Caller, u16)>)> = vec![
        (
            "update-inuse-status",
            vec![
                (OwnVm, writes[0]),
                (Nobody, writes[1]),
                (OtherVm, writes[2]),
                (Admin, 401),
            ],
        ),
        (
            "gpu-health",
            vec![(OwnVm, 200), (Nobody, 401), (OtherVm, 403), (Admin, 401)],
        ),
        (
            "post-vm-status",
            vec![(OwnVm, 200), (Nobody, 401), (OtherVm, 403), (Admin, 401)],
        ),
        (
            "post-vm-metrics",
            vec![(OwnVm, 200), (Nobody, 401), (OtherVm, 403), (Admin, 401)],
        ),
        (
            "post-vm-logs",
            vec![
                (OwnVm, 200),
                (Nobody, 401),
                (OtherVm, 403),
                (Admin, 401),
                (Forwarder, 200),
            ],
        ),
        (
            "get-vm-status",
            vec![(OwnVm, 200), (Nobody, 401), (OtherVm, 403), (Admin, 200)],
        ),
        // Data export: a VM reports only its own part, never without its credential;
        // exports are started and downloaded by the admin only.
        (
            "vm-export",
            vec![(OwnVm, 200), (Nobody, 401), (OtherVm, 403), (Admin, 401)],
        ),
        (
            "export-download",
            vec![(Admin, 200), (Nobody, 401), (OwnVm, 401), (OtherVm, 401)],
        ),
        ("scp-client", vec![(Nobody, 401), (OwnVm, 401), (OtherVm, 401)]),
        (
            "get-vm-logs",
            vec![(OwnVm, 200), (Nobody, 401), (OtherVm, 403), (Admin, 200)],
        ),
        (
            "list-vm-status",
            vec![(Admin, 200), (Nobody, 401), (OtherVm, 401), (OwnVm, 401)],
        ),
        // An admin's action on one VM: never by a VM, never without a session.
        (
            "admin-vm-action",
            vec![(Nobody, 401), (OwnVm, 401), (OtherVm, 401)],
        ),
    ];
    for (function, cases) in matrix {
        for (who, want) in cases {
            let before = snapshot(&f.client).await;
            let resp = route(function)
                .handle(&f.state, as_caller(fixture(function, "valid"), who))
                .await;
            assert_eq!(
                resp.status().as_u16(),
                want,
                "{function} as {who:?}: {}",
                text(&resp)
            );
            if want >= 400 {
                assert_eq!(
                    snapshot(&f.client).await,
                    before,
                    "{function} as {who:?} changed data"
                );
            }
        }
    }
    // The other VM's row is untouched by everything above.
    let other = vms::get_vm(&f.client, &Hostname::parse(OTHER).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!other.in_use && other.healthy.is_none() && other.cloud_init.is_none());
}

#[tokio::test]
async fn legacy_mode_accepts_classic_vms_without_a_credential_but_never_an_enrolled_one() {
    let f = setup(true).await;
    // A classic VM: no credential in its row.
    vms::create_vms(
        &f.client,
        &[vms::NewVm {
            hostname: Hostname::parse("classic-vm-1").unwrap(),
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await
    .unwrap();
    let mut classic = as_caller(fixture("update-inuse-status", "valid"), Caller::Nobody);
    *classic.body_mut() = Body::from(r#"{"hostname":"classic-vm-1","status":true}"#);
    assert_eq!(
        route("update-inuse-status")
            .handle(&f.state, classic)
            .await
            .status(),
        200
    );
    // An enrolled VM must show its credential, even in legacy mode: nothing changes.
    let before = snapshot(&f.client).await;
    let enrolled = as_caller(fixture("update-inuse-status", "valid"), Caller::Nobody);
    assert_eq!(
        route("update-inuse-status")
            .handle(&f.state, enrolled)
            .await
            .status(),
        401
    );
    assert_eq!(snapshot(&f.client).await, before);
    let wrong = as_caller(fixture("update-inuse-status", "valid"), Caller::OtherVm);
    assert_eq!(
        route("update-inuse-status")
            .handle(&f.state, wrong)
            .await
            .status(),
        403
    );
    // Reads that can show a participant's data still need a credential.
    let read = as_caller(fixture("get-vm-logs", "valid"), Caller::Nobody);
    assert_eq!(route("get-vm-logs").handle(&f.state, read).await.status(), 401);
}

async fn request_vm(state: &AppState, email: &str, code: &str) -> Response<Body> {
    let pasted = format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    );
    let body = format!(
        "email={}&crd_command={}",
        email.replace('@', "%40"),
        pasted
            .replace('%', "%25")
            .replace(' ', "+")
            .replace('"', "%22")
            .replace('$', "%24")
            .replace('/', "%2F")
    );
    let mut req = fixture("request-vm", "valid");
    *req.body_mut() = Body::from(body);
    route("request-vm").handle(state, req).await
}

fn field(page: &str, id: &str) -> String {
    let start = page.find(&format!("id=\"{id}\">")).unwrap() + id.len() + 6;
    page[start..].split('<').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_success_page_shows_the_hostname_and_a_fresh_six_digit_pin() {
    let f = setup(false).await;
    let a = request_vm(&f.public, "ada@uni.edu", "4/0Aaaaa").await;
    let b = request_vm(&f.public, "bob@uni.edu", "4/0Abbbb").await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (pa, pb) = (text(&a), text(&b));
    let (ha, hb) = (field(&pa, "hostname"), field(&pb, "hostname"));
    let (pin_a, pin_b) = (field(&pa, "pin"), field(&pb, "pin"));
    assert_ne!(ha, hb);
    for pin in [&pin_a, &pin_b] {
        assert!(pin.len() == 6 && pin.bytes().all(|c| c.is_ascii_digit()), "{pin}");
    }
    // Two draws from a million can collide, but not by construction (classic: 123456).
    let stored: Vec<(String, String)> = f
        .client
        .query(
            "SELECT pin, crd_command FROM vms WHERE user_email IS NOT NULL ORDER BY user_email",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored[0].0, pin_a);
    assert_eq!(stored[1].0, pin_b);
    assert_eq!(
        stored[0].1,
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0Aaaaa\" --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    );
    // Several assignments give different PINs (20 requests on fresh databases would be
    // slow; the PIN generator's own test covers the distribution).
    assert!(pin_a != pin_b || pin_a != "123456");
    // The same person again with the same command gets the same VM and PIN.
    let again = text(&request_vm(&f.public, "ADA@uni.edu", "4/0Aaaaa").await);
    assert_eq!(
        (field(&again, "hostname"), field(&again, "pin")),
        (ha.clone(), pin_a.clone())
    );
    assert!(again.contains("data-state=\"connecting\""), "{again}");

    // With a new code moments later: refused for now (429), nothing changes.
    let before = snapshot(&f.client).await;
    let soon = request_vm(&f.public, "ada@uni.edu", "4/0Acccc").await;
    assert_eq!(soon.status(), 429);
    let page = text(&soon);
    assert!(page.contains("role=\"alert\"") && page.contains("wait"), "{page}");
    assert_eq!(snapshot(&f.client).await, before);
    // Later (the limit's 20 s passed): the new code replaces the stored one, with a
    // fresh PIN, on the same VM; the page says what happened.
    f.client
        .execute(
            "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap();
    let fresh = text(&request_vm(&f.public, "ada@uni.edu", "4/0Acccc").await);
    assert_eq!(field(&fresh, "hostname"), ha);
    assert!(fresh.contains("your new code was sent"), "{fresh}");
    let (pin, command, changes): (String, String, i32) = {
        let r = f
            .client
            .query_one(
                "SELECT pin, crd_command, code_changes FROM vms WHERE user_email = 'ada@uni.edu'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(field(&fresh, "pin"), pin);
    assert!(
        command.contains("4/0Acccc") && changes == 1,
        "{command} {changes}"
    );
    // Past the seat's limit: a clear refusal.
    f.client
        .execute(
            "UPDATE vms SET code_changes = 10, code_changed_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap();
    let over = request_vm(&f.public, "ada@uni.edu", "4/0Adddd").await;
    assert_eq!(over.status(), 429);
    assert!(text(&over).contains("the most one seat may"), "{}", text(&over));
    // Another email never reaches that seat: it gets another VM or none.
    let other = text(&request_vm(&f.public, "eve@uni.edu", "4/0Aeeee").await);
    assert!(!other.contains(&format!("id=\"hostname\">{ha}<")), "{other}");
}

/// The seat page by its token: the token is required (a wrong one is 404), the state
/// follows the daemon's reports, and the refused-code path offers the form, which sends
/// a fresh code to the same VM.
#[tokio::test]
async fn the_seat_page_needs_its_token_and_follows_the_daemons_reports() {
    let f = setup(false).await;
    let page = text(&request_vm(&f.public, "ada@uni.edu", "4/0Aaaaa").await);
    let link = page
        .split("href=\"/seat/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the success page links to the seat page")
        .to_owned();
    assert_eq!(link.len(), 64);
    let host = field(&page, "hostname");
    // Wrong and malformed tokens: 404, nothing shown.
    for wrong in ["0".repeat(64), "../admin".into(), link[..63].to_owned()] {
        let mut req = fixture("seat-status", "valid");
        *req.uri_mut() = format!("/api/seat/{wrong}").parse().unwrap();
        let r = route("seat-status")
            .handle(&f.public, without_path_params(req))
            .await;
        assert_eq!(r.status(), 404, "{wrong}");
        assert!(!text(&r).contains(&host));
    }
    let seat = |token: &str| {
        let mut req = fixture("seat-status", "valid");
        *req.uri_mut() = format!("/api/seat/{token}").parse().unwrap();
        without_path_params(req)
    };
    let r = route("seat-status").handle(&f.public, seat(&link)).await;
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(
        (j["state"].as_str(), j["hostname"].as_str()),
        (Some("connecting"), Some(host.as_str()))
    );
    // The daemon reports start-host failed for this assignment: refused.
    let (pin, command): (String, String) = {
        let r = f
            .client
            .query_one("SELECT pin, crd_command FROM vms WHERE hostname = $1", &[&host])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let key = lablink_wire::assignment_key(&host, &pin, &command);
    let h = Hostname::parse(&host).unwrap();
    let report = |ok| vms::StartHostReport {
        ok,
        exit_code: Some(1),
        output: "",
        assignment: Some(&key),
    };
    vms::set_status_after_start_host(&f.client, &h, VmStatus::Error, None, Some(report(false)), None)
        .await
        .unwrap();
    let r = route("seat-status").handle(&f.public, seat(&link)).await;
    let j: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(j["state"], "refused");
    // The page offers the form; a bad command is refused with the reason (400), a good
    // one goes to the same VM and the page shows it connecting again.
    let mut req = fixture("seat-page", "valid");
    *req.uri_mut() = format!("/seat/{link}").parse().unwrap();
    let page = text(
        &route("seat-page")
            .handle(&f.public, without_path_params(req))
            .await,
    );
    assert!(
        page.contains(&format!("action=\"/api/seat/{link}/code\""))
            && page.contains("data-state=\"refused\"")
    );
    f.client
        .execute(
            "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
            &[],
        )
        .await
        .unwrap();
    let send = |cmd: &str| {
        let mut req = fixture("seat-code", "valid");
        *req.uri_mut() = format!("/api/seat/{link}/code").parse().unwrap();
        *req.body_mut() = Body::from(format!(
            "crd_command={}",
            cmd.replace(' ', "+").replace('"', "%22").replace('/', "%2F")
        ));
        without_path_params(req)
    };
    let bad = route("seat-code")
        .handle(&f.public, send("start-host --code=\"x\"; reboot"))
        .await;
    assert_eq!(bad.status(), 400);
    let good = route("seat-code")
        .handle(
            &f.public,
            send(
                "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0Anew\" --name=$(hostname)",
            ),
        )
        .await;
    assert_eq!(good.status(), 303, "{}", text(&good));
    let r = route("seat-status").handle(&f.public, seat(&link)).await;
    let j: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(
        (j["state"].as_str(), j["hostname"].as_str()),
        (Some("connecting"), Some(host.as_str()))
    );
    let stored: String = f
        .client
        .query_one("SELECT crd_command FROM vms WHERE hostname = $1", &[&host])
        .await
        .unwrap()
        .get(0);
    assert!(stored.contains("4/0Anew"), "{stored}");
    // Ready once the daemon reports success for the new assignment.
    let (pin, command): (String, String) = {
        let r = f
            .client
            .query_one("SELECT pin, crd_command FROM vms WHERE hostname = $1", &[&host])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let key2 = lablink_wire::assignment_key(&host, &pin, &command);
    let ok = vms::StartHostReport {
        ok: true,
        exit_code: Some(0),
        output: "",
        assignment: Some(&key2),
    };
    vms::set_status_after_start_host(&f.client, &h, VmStatus::Running, None, Some(ok), None)
        .await
        .unwrap();
    let r = route("seat-status").handle(&f.public, seat(&link)).await;
    let j: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(
        (j["state"].as_str(), j["pin"].as_str()),
        (Some("ready"), Some(pin.as_str()))
    );
}

/// The fixture with its API Gateway path parameters removed: the handler reads the
/// path itself (as behind the local runner).
fn without_path_params(req: Request) -> Request {
    use lambda_http::RequestExt;
    req.with_path_parameters(std::collections::HashMap::<String, String>::new())
}

#[tokio::test]
async fn no_free_vm_gives_the_form_back_and_public_pages_leak_nothing() {
    let f = setup(false).await;
    request_vm(&f.public, "ada@uni.edu", "4/0Asecretcode1").await;
    request_vm(&f.public, "bob@uni.edu", "4/0Asecretcode2").await;
    let before = snapshot(&f.client).await;
    let full = request_vm(&f.public, "cy@uni.edu", "4/0Acode3").await;
    assert_eq!(full.status(), 200);
    let page = text(&full);
    assert!(
        page.contains("No VMs available") && page.contains("value=\"cy@uni.edu\""),
        "{page}"
    );
    assert!(page.contains("<form"), "the form, not an error page");
    assert_eq!(snapshot(&f.client).await, before);

    for (route, function) in [
        (route("index"), "index"),
        (route("unassigned-vms-count"), "unassigned-vms-count"),
    ] {
        let body = text(&route.handle(&f.public, fixture(function, "valid")).await);
        for secret in ["ada@uni.edu", "secretcode", "bob@"] {
            assert!(!body.contains(secret), "{function} shows {secret}");
        }
    }
    let count = text(
        &route("unassigned-vms-count")
            .handle(&f.public, fixture("unassigned-vms-count", "valid"))
            .await,
    );
    assert_eq!(count, "{\"count\":0}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let f = setup(false).await;
    let mut big = fixture("post-vm-logs", "valid");
    *big.body_mut() = Body::from(format!(
        "{{\"log_stream\":\"{HOST}\",\"messages\":[\"{}\"]}}",
        "x".repeat(2 << 20)
    ));
    let r = route("post-vm-logs").handle(&f.state, big).await;
    assert_eq!(r.status(), 413);

    let r = route("health")
        .handle(&f.public, fixture("health", "invalid-method"))
        .await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()[header::ALLOW], "GET");

    let mut empty = fixture("gpu-health", "valid");
    *empty.body_mut() = Body::Empty;
    let r = route("gpu-health").handle(&f.state, empty).await;
    assert_eq!(r.status(), 400);
    assert!(text(&r).contains("empty"));

    // An unknown hostname is refused exactly as a known VM with another's credential
    // (403, the same body): nothing tells anyone which hostnames exist.
    let event = std::fs::read_to_string(events_dir().join("post-vm-metrics/valid.json")).unwrap();
    let unknown = lambda_http::request::from_str(&event.replace(HOST, "lablink-vm-ghost")).unwrap();
    let unknown = route("post-vm-metrics").handle(&f.state, unknown).await;
    let other = as_caller(fixture("post-vm-metrics", "valid"), Caller::OtherVm);
    let other = route("post-vm-metrics").handle(&f.state, other).await;
    assert_eq!(unknown.status(), 403);
    assert_eq!((unknown.status(), text(&unknown)), (other.status(), text(&other)));

    let mut bad = fixture("get-vm-logs", "valid");
    *bad.uri_mut() = "/api/vm-logs/lablink-vm-test-1?after=abc".parse().unwrap();
    let bad = lambda_http::RequestExt::with_query_string_parameters(
        bad,
        std::collections::HashMap::from([("after".to_string(), "abc".to_string())]),
    );
    assert_eq!(route("get-vm-logs").handle(&f.state, bad).await.status(), 400);
}

#[tokio::test]
async fn logs_read_after_a_cursor_and_an_initializing_vm_without_logs_is_503() {
    let f = setup(false).await;
    let resp = route("post-vm-logs")
        .handle(&f.state, fixture("post-vm-logs", "valid"))
        .await;
    assert_eq!(
        text(&resp),
        "{\"message\":\"VM logs posted successfully.\",\"stored\":2}"
    );
    // Redelivery stores nothing new.
    let resp = route("post-vm-logs")
        .handle(&f.state, fixture("post-vm-logs", "valid"))
        .await;
    assert!(text(&resp).contains("\"stored\":0"));
    let r = route("get-vm-logs")
        .handle(&f.state, fixture("get-vm-logs", "valid"))
        .await;
    let v: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(v["logs"], "Cloud-init v. 24.1 running\nDocker container started");
    let next = v["next"].as_i64().unwrap();
    let later = lambda_http::RequestExt::with_query_string_parameters(
        fixture("get-vm-logs", "valid"),
        std::collections::HashMap::from([("after".to_string(), next.to_string())]),
    );
    let v: serde_json::Value =
        serde_json::from_str(&text(&route("get-vm-logs").handle(&f.state, later).await)).unwrap();
    assert_eq!(v["lines"].as_array().unwrap().len(), 0);
    assert_eq!(v["next"], next);

    vms::set_status(
        &f.client,
        &Hostname::parse(OTHER).unwrap(),
        VmStatus::Initializing,
        None,
    )
    .await
    .unwrap();
    let text_other = std::fs::read_to_string(events_dir().join("get-vm-logs/valid.json"))
        .unwrap()
        .replace(HOST, OTHER);
    let r = route("get-vm-logs")
        .handle(&f.state, lambda_http::request::from_str(&text_other).unwrap())
        .await;
    assert_eq!(r.status(), 503);
    drop(f.db);
}

#[tokio::test]
async fn health_reports_the_schema_version() {
    let f = setup(false).await;
    let r = route("health")
        .handle(&f.public, fixture("health", "valid"))
        .await;
    let v: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["schema_version"], lablink_db::latest_known_version());
}

/// Without a database, health says so in a word: the driver's text (addresses, roles)
/// goes to the logs only.
#[tokio::test]
async fn health_without_a_database_tells_no_details() {
    let config = AppConfig {
        db: lablink_db::DbConfig::from_url(
            "postgres://lablink_secret_role@127.0.0.1:1/hidden_db_name?connect_timeout=2",
        )
        .unwrap(),
        legacy_vm_auth: false,
        paused: false,
        admin: AdminSource::None,
        forwarder_token_hash: None,
        jobs_table: None,
        max_vms: 5,
        deployment: lablink_core::domain::DeploymentName::parse(fixtures::DEPLOYMENT).unwrap(),
        export_bucket: None,
        vm: Default::default(),
        gate: Default::default(),
        fleet_hours: 12,
        fleet_notice: chrono::Duration::minutes(15),
        admin_cidrs: None,
        admin_secret_ttl: std::time::Duration::from_secs(60),
    };
    let state = AppState::new(config);
    let r = route("health").handle(&state, fixture("health", "valid")).await;
    assert_eq!(r.status(), 503);
    let body = text(&r);
    assert!(body.contains("database unreachable"), "{body}");
    for leak in [
        "127.0.0.1",
        "lablink_secret_role",
        "hidden_db_name",
        "refused",
        "error connecting",
    ] {
        assert!(!body.contains(leak), "{leak} in {body}");
    }
}

/// A `next` that is no valid header value (control characters) is not followed: the
/// login goes to the dashboard instead of failing.
#[tokio::test]
async fn a_login_next_with_control_characters_goes_to_the_dashboard() {
    let f = setup(false).await;
    for next in [
        "%2Fadmin%0D%0AX-Injected%3A+1",
        "%2Fadmin%2Fjobs%00",
        "%2Fadmin%09x",
    ] {
        let mut req = fixture("admin-login", "valid");
        *req.body_mut() = Body::from(format!(
            "user=admin&password={}&csrf=fixture-login-form-token&next={next}",
            fixtures::ADMIN_PASSWORD
        ));
        let r = route("admin-login").handle(&f.public, req).await;
        assert_eq!(r.status(), 303, "{next}: {}", text(&r));
        assert_eq!(r.headers()[header::LOCATION], "/admin", "{next}");
    }
}

#[test]
fn routes_match_their_paths_only() {
    assert!(route("get-vm-status").matches_path("/api/vm-status/vm-1"));
    assert!(!route("get-vm-status").matches_path("/api/vm-status"));
    assert!(!route("get-vm-status").matches_path("/api/vm-status/"));
    assert!(route("list-vm-status").matches_path("/api/vm-status"));
    assert!(route("index").matches_path("/"));
    assert!(!route("index").matches_path("/x"));
}

// ---- admin console -------------------------------------------------------------------

fn bare(method: &str, path: &str) -> Request {
    lambda_http::http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "admin.test")
        .body(Body::Empty)
        .unwrap()
}

fn form_req(path: &str, body: &str, cookies: &[String]) -> Request {
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri(path)
        .header(header::HOST, "admin.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if !cookies.is_empty() {
        b = b.header(header::COOKIE, cookies.join("; "));
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn set_cookie(r: &Response<Body>, name: &str) -> Option<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

fn hidden(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in page"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Log in through the real pages (each route as its own database user); returns the
/// session cookie and its CSRF token.
async fn log_in(f: &Fixture) -> (String, String) {
    log_in_on(f.state_for("admin-login"), f.state_for("admin-home")).await
}

/// Log in with `public` serving the login routes and `app` the dashboard.
async fn log_in_on(public: &AppState, app: &AppState) -> (String, String) {
    let page = route("admin-login-page")
        .handle(public, bare("GET", "/admin/login"))
        .await;
    assert_eq!(page.status(), 200);
    let login_cookie = set_cookie(&page, "lablink_login_csrf").unwrap();
    let token = hidden(&text(&page), "csrf");
    let r = route("admin-login")
        .handle(
            public,
            form_req(
                "/admin/login",
                &format!(
                    "user=admin&password={}&csrf={token}&next=%2Fadmin%2Finstances",
                    fixtures::ADMIN_PASSWORD
                ),
                &[login_cookie],
            ),
        )
        .await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    assert_eq!(r.headers()[header::LOCATION], "/admin/instances");
    let set = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("lablink_session="))
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    let session = set.split(';').next().unwrap().to_owned();
    let mut home = bare("GET", "/admin");
    home.headers_mut()
        .insert(header::COOKIE, HeaderValue::from_str(&session).unwrap());
    let page = route("admin-home").handle(app, home).await;
    assert_eq!(page.status(), 200);
    let csrf = hidden(&text(&page), "csrf");
    (session, csrf)
}

#[tokio::test]
async fn admin_routes_need_a_session_pages_redirect_and_json_answers_401() {
    let f = setup(false).await;
    for route in routes::ALL {
        let (method, path) = route.method_and_path();
        let path = path.replace("{hostname}", HOST).replace("{id}", fixtures::JOB);
        let is_admin_page =
            method == lambda_http::http::Method::GET && path.starts_with("/admin") && path != "/admin/login";
        let is_admin_json = [
            "get-job",
            "list-vm-status",
            "launch",
            "destroy",
            "set-aws-credentials",
            "unset-aws-credentials",
            "admin-logout",
        ]
        .contains(&route.function);
        if !is_admin_page && !is_admin_json {
            continue;
        }
        let req = if method == lambda_http::http::Method::GET {
            bare("GET", &path)
        } else {
            form_req(&path, "num_vms=1&confirm=test", &[])
        };
        let before = snapshot(&f.client).await;
        let r = route.handle(&f.state, req).await;
        if is_admin_page {
            assert_eq!(r.status(), 303, "{path}");
            let to = r.headers()[header::LOCATION].to_str().unwrap();
            assert!(to.starts_with("/admin/login?next=/admin"), "{path} → {to}");
        } else {
            assert!(matches!(r.status().as_u16(), 401), "{path}: {}", r.status());
        }
        assert_eq!(snapshot(&f.client).await, before, "{path} changed data");
    }
}

#[tokio::test]
async fn admin_writes_need_the_sessions_csrf_token_and_change_nothing_without_it() {
    let f = setup(false).await;
    let (session, csrf) = log_in(&f).await;
    // Another live session of the same admin (another browser).
    let other_session = {
        let (cookie, _) = log_in(&f).await;
        cookie
    };
    let cases: [(Route, &str); 5] = [
        (route("launch"), "num_vms=1"),
        (route("destroy"), "confirm=test"),
        (
            route("set-aws-credentials"),
            "aws_access_key_id=AKIAAAAAAAAAAAAAAAAA&aws_secret_access_key=xxxxxxxxxxxxxxxxxxxxxxxx",
        ),
        (route("unset-aws-credentials"), ""),
        (route("admin-logout"), ""),
    ];
    for (route, body) in cases {
        let path = route.method_and_path().1;
        for (label, cookie, token) in [
            ("no token", session.clone(), String::new()),
            ("forged token", session.clone(), "AAAA".to_owned()),
            ("another session's token", other_session.clone(), csrf.clone()),
        ] {
            let before = snapshot(&f.client).await;
            let b = if token.is_empty() {
                body.to_owned()
            } else {
                format!("{body}&csrf={token}")
            };
            let r = route.handle(&f.state, form_req(path, &b, &[cookie])).await;
            assert_eq!(r.status(), 403, "{path} with {label}: {}", text(&r));
            assert_eq!(
                snapshot(&f.client).await,
                before,
                "{path} with {label} changed data"
            );
        }
        // A cross-site post with the right token is refused too, as is an opaque origin
        // (`null`: sandboxed frames, or a page served with `Referrer-Policy: no-referrer`).
        for origin in ["https://evil.example", "null"] {
            let mut req = form_req(
                path,
                &format!("{body}&csrf={csrf}"),
                std::slice::from_ref(&session),
            );
            req.headers_mut()
                .insert(header::ORIGIN, HeaderValue::from_static(origin));
            assert_eq!(
                route.handle(&f.state, req).await.status(),
                403,
                "{path} from origin {origin}"
            );
        }
    }
    // With the token, a launch is queued and the browser goes to its job page; the same
    // form again (same idempotency key) makes no second job.
    let key = lablink_ops::JobId::generate(chrono::Utc::now());
    let body = format!("num_vms=2&csrf={csrf}&job_id={key}");
    for _ in 0..2 {
        let r = route("launch")
            .handle(
                &f.state,
                form_req("/api/launch", &body, std::slice::from_ref(&session)),
            )
            .await;
        assert_eq!(r.status(), 303, "{}", text(&r));
        assert_eq!(r.headers()[header::LOCATION], format!("/admin/jobs/{key}"));
    }
    let jobs: i64 = f
        .client
        .query_one("SELECT count(*) FROM ops_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 3, "the two fixture jobs and one launch");
    // Another launch while that one is queued: refused with a clear message.
    let r = route("launch")
        .handle(
            &f.state,
            form_req(
                "/api/launch",
                &format!("num_vms=1&csrf={csrf}"),
                std::slice::from_ref(&session),
            ),
        )
        .await;
    assert_eq!(r.status(), 409);
    assert!(text(&r).contains("Another job is running"), "{}", text(&r));
    // HTTP Basic works for scripts, but not from a browser page (it sends Origin).
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{}", fixtures::ADMIN_PASSWORD)
        )
    );
    let mut req = bare("GET", &format!("/api/jobs/{key}"));
    req.headers_mut()
        .insert(header::AUTHORIZATION, HeaderValue::from_str(&basic).unwrap());
    let r = route("get-job").handle(&f.state, req).await;
    assert_eq!(r.status(), 200, "{}", text(&r));
    assert!(text(&r).contains("\"state\":\"queued\""));
    let mut req = form_req("/api/admin/unset-aws-credentials", "", &[]);
    req.headers_mut()
        .insert(header::AUTHORIZATION, HeaderValue::from_str(&basic).unwrap());
    req.headers_mut()
        .insert(header::ORIGIN, HeaderValue::from_static("http://admin.test"));
    assert_eq!(
        route("unset-aws-credentials")
            .handle(&f.state, req)
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn the_sixth_failed_login_from_one_address_is_throttled() {
    let f = setup(false).await;
    let page = route("admin-login-page")
        .handle(&f.state, bare("GET", "/admin/login"))
        .await;
    let cookie = set_cookie(&page, "lablink_login_csrf").unwrap();
    let token = hidden(&text(&page), "csrf");
    let attempt = |password: &str| {
        form_req(
            "/admin/login",
            &format!("user=admin&password={password}&csrf={token}"),
            std::slice::from_ref(&cookie),
        )
    };
    for i in 1..=5 {
        let r = route("admin-login").handle(&f.public, attempt("guess")).await;
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = route("admin-login").handle(&f.public, attempt("guess")).await;
    assert_eq!(r.status(), 429, "the 6th");
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    // Even the right password waits now: guessing must not tell.
    let r = route("admin-login")
        .handle(&f.public, attempt(fixtures::ADMIN_PASSWORD))
        .await;
    assert_eq!(r.status(), 429);
    assert!(set_cookie(&r, "lablink_session").is_none());
}

/// A parallel burst of wrong passwords from one address gets exactly the limit (5) of
/// checks; the rest are throttled before the slow hash. (Checked before and counted after,
/// most of a burst used to get through the check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_of_logins_gets_at_most_the_limit_checked() {
    let f = std::sync::Arc::new(setup(false).await);
    let page = route("admin-login-page")
        .handle(&f.state, bare("GET", "/admin/login"))
        .await;
    let cookie = set_cookie(&page, "lablink_login_csrf").unwrap();
    let token = hidden(&text(&page), "csrf");
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (f, req) = (
                f.clone(),
                form_req(
                    "/admin/login",
                    &format!("user=admin&password=guess&csrf={token}"),
                    std::slice::from_ref(&cookie),
                ),
            );
            tokio::spawn(async move {
                route("admin-login")
                    .handle(&f.public, req)
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [[401; 5].as_slice(), [429; 7].as_slice()].concat(),
        "{statuses:?}"
    );
    let user_count: i32 = f
        .client
        .query_one(
            "SELECT failures FROM admin_login_failures WHERE key = 'user:admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(user_count, 12);
}

/// The `lablink-web` features a function crate enables (its `Cargo.toml`'s
/// `lablink-web = { ..., features = [...] }` line; none when it has no such list).
fn crate_features(cargo_toml: &str) -> Vec<String> {
    let line = cargo_toml
        .lines()
        .find(|l| l.trim_start().starts_with("lablink-web"))
        .unwrap_or_default();
    let Some(list) = line.split_once("features = [").map(|(_, rest)| rest) else {
        return Vec::new();
    };
    let list = &list[..list.find(']').expect("a closed feature list")];
    let mut features: Vec<String> = list
        .split(',')
        .map(|f| f.trim().trim_matches('"').to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    features.sort();
    features
}

#[test]
fn the_function_manifest_matches_the_route_table_and_the_crates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("functions/manifest.json")).unwrap())
            .unwrap();
    type Row = (String, String, String, String, bool, bool, Option<String>);
    let mut listed: Vec<Row> = m["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (
                s("function"),
                s("method"),
                s("path"),
                s("access"),
                r["db"].as_bool().unwrap(),
                r["jobs_table"].as_bool().unwrap(),
                r["export_bucket"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let mut table: Vec<Row> = routes::ALL
        .iter()
        .map(|r| {
            (
                r.function.to_owned(),
                r.verb.as_str().to_owned(),
                r.path.to_owned(),
                r.access.as_str().to_owned(),
                r.reaches.db,
                r.reaches.jobs_table,
                r.reaches.export_bucket.map(str::to_owned),
            )
        })
        .collect();
    listed.sort();
    table.sort();
    assert_eq!(
        listed, table,
        "functions/manifest.json's http list is the route table"
    );
    // Whom each function logs in as (the CDK app gives it exactly this user): a route
    // anyone may call as lablink_public, which may only what those routes' statements
    // need (shared/db/src/roles.rs); every other function as lablink_app.
    for r in routes::ALL {
        let want = r.reaches.db.then_some(match r.access {
            routes::Access::Participant | routes::Access::Public => roles::PUBLIC,
            routes::Access::Vm | routes::Access::Admin => roles::APP,
        });
        assert_eq!(
            manifest_db_user(r.function).as_deref(),
            want,
            "{}'s db_user",
            r.function
        );
    }
    for e in m["events"].as_array().unwrap() {
        assert_eq!(e["db_user"], roles::APP, "{}", e["function"]);
    }
    // Each route's crate enables exactly the features its route declares, and its main
    // serves that route.
    for route in routes::ALL {
        let dir = root.join("functions").join(route.function);
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let mut want: Vec<String> = route.features.iter().map(|f| f.to_string()).collect();
        want.sort();
        assert_eq!(
            crate_features(&cargo),
            want,
            "functions/{}/Cargo.toml's lablink-web features",
            route.function
        );
        let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
        let serves = main
            .split("lablink_web::lambda::serve(lablink_web::routes::")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_default()
            .to_owned();
        let (group, name) = serves.split_once("::").unwrap_or_default();
        let file = std::fs::read_to_string(root.join(format!("shared/web/src/routes/{group}.rs")))
            .unwrap_or_default();
        let defined = file
            .split(&format!("pub const {name}: Route = Route {{"))
            .nth(1)
            .and_then(|body| body.lines().find(|l| l.trim_start().starts_with("function:")))
            .map(|l| {
                l.trim()
                    .trim_start_matches("function:")
                    .trim()
                    .trim_matches(|c| c == '"' || c == ',')
            })
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            defined, route.function,
            "functions/{}/src/main.rs serves {serves}, which is not its route",
            route.function
        );
    }
    let mut all: Vec<String> = listed.into_iter().map(|(f, ..)| f).collect();
    all.extend(
        m["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["function"].as_str().unwrap().to_owned()),
    );
    all.sort();
    let mut crates: Vec<String> = std::fs::read_dir(root.join("functions"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    crates.sort();
    assert_eq!(all, crates, "one crate per listed function");
}

// ---- hardening: who may take a seat, the admin allowlist, sessions ------------------

/// `req` as API Gateway delivers it from `ip` (its `sourceIp`).
fn from_ip(req: Request, ip: &str) -> Request {
    use lambda_http::RequestExt;
    use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
    let mut ctx = ApiGatewayV2httpRequestContext::default();
    ctx.http.source_ip = Some(ip.into());
    req.with_request_context(lambda_http::request::RequestContext::ApiGatewayV2(ctx))
}

/// `n` more free VMs.
async fn add_free_vms(c: &tokio_postgres::Client, n: usize) {
    let new: Vec<_> = (0..n)
        .map(|i| vms::NewVm {
            hostname: Hostname::parse(&format!("lablink-vm-free-{i}")).unwrap(),
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Running,
            provision: None,
        })
        .collect();
    vms::create_vms(c, &new).await.unwrap();
}

/// A request for a VM with these form fields, from `ip`.
async fn request_vm_with(
    f: &Fixture,
    email: &str,
    code: &str,
    access_code: &str,
    ip: &str,
) -> Response<Body> {
    let pasted = format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    );
    let body = serde_urlencoded::to_string([
        ("email", email),
        ("crd_command", &pasted),
        ("access_code", access_code),
    ])
    .unwrap();
    let mut req = fixture("request-vm", "valid");
    *req.body_mut() = Body::from(body);
    route("request-vm")
        .handle(f.state_for("request-vm"), from_ip(req, ip))
        .await
}

/// Save the workshop gate through the dashboard's form.
async fn set_gate(f: &Fixture, fields: &[(&str, &str)]) -> Response<Body> {
    let (session, csrf) = log_in(f).await;
    set_gate_as(f.state_for("admin-workshop"), &session, &csrf, fields).await
}

async fn set_gate_as(state: &AppState, session: &str, csrf: &str, fields: &[(&str, &str)]) -> Response<Body> {
    let mut all = vec![("csrf", csrf)];
    all.extend_from_slice(fields);
    let body = serde_urlencoded::to_string(&all).unwrap();
    route("admin-workshop")
        .handle(
            state,
            form_req("/api/admin/workshop", &body, &[session.to_owned()]),
        )
        .await
}

#[tokio::test]
async fn a_wrong_access_code_or_an_unlisted_email_gets_the_form_back_and_no_vm() {
    let f = setup(false).await;
    // Without a gate, the form has no code field.
    let page = text(
        &route("index")
            .handle(f.state_for("index"), fixture("index", "valid"))
            .await,
    );
    assert!(!page.contains("name=\"access_code\""));
    let r = set_gate(
        &f,
        &[
            ("access_code", " sleap-2026 "),
            ("participants", "Name,Email\nAda,ada@uni.edu\n@lab.org\n"),
            ("action", "save"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    let page = text(
        &route("index")
            .handle(f.state_for("index"), fixture("index", "valid"))
            .await,
    );
    assert!(
        page.contains("name=\"access_code\""),
        "the form asks for the code"
    );
    let before = snapshot(&f.client).await;
    for (email, code, why) in [
        ("ada@uni.edu", "", "needs its access code"),
        ("ada@uni.edu", "sleap-2025", "not this workshop's access code"),
        ("ada@uni.edu", "SLEAP-2026", "not this workshop's access code"),
        (
            "eve@uni.edu",
            "sleap-2026",
            "not on this workshop's participant list",
        ),
    ] {
        let r = request_vm_with(&f, email, "4/0Agate", code, "198.51.100.1").await;
        let body = text(&r);
        assert_eq!(r.status(), 403, "{email} {code:?}: {body}");
        assert!(body.contains(why), "{email} {code:?}: {body}");
        assert!(body.contains("name=\"access_code\""));
        assert_eq!(snapshot(&f.client).await, before, "{email} {code:?} changed data");
    }
    for email in ["ada@uni.edu", "bob@lab.org"] {
        let r = request_vm_with(&f, email, "4/0Agate", "sleap-2026", "198.51.100.1").await;
        assert_eq!(r.status(), 200, "{email}: {}", text(&r));
        assert!(text(&r).contains("id=\"pin\""), "{email} got a seat");
    }
    // Back to the deployment's defaults (none): the code is no longer asked.
    let r = set_gate(&f, &[("action", "defaults")]).await;
    assert_eq!(r.status(), 303);
    let page = text(
        &route("index")
            .handle(f.state_for("index"), fixture("index", "valid"))
            .await,
    );
    assert!(!page.contains("name=\"access_code\""));
}

#[tokio::test]
async fn an_address_gets_at_most_its_limit_of_new_seats_then_429_with_retry_after() {
    let f = setup(false).await;
    add_free_vms(&f.client, 6).await;
    let r = set_gate(&f, &[("seats_per_address", "2"), ("window_minutes", "10")]).await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    let nat = "198.51.100.9";
    for email in ["a1@uni.edu", "a2@uni.edu"] {
        let r = request_vm_with(&f, email, "4/0Alimit", "", nat).await;
        assert_eq!(r.status(), 200, "{email}: {}", text(&r));
    }
    let before = snapshot(&f.client).await;
    let r = request_vm_with(&f, "a3@uni.edu", "4/0Alimit", "", nat).await;
    assert_eq!(r.status(), 429, "{}", text(&r));
    let wait: u64 = r.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&wait), "{wait}");
    assert!(text(&r).contains("Too many VMs were requested from your network"));
    assert_eq!(
        snapshot(&f.client).await,
        before,
        "a refused request changes nothing"
    );
    // Someone who has a seat still reaches it from that address.
    let r = request_vm_with(&f, "a1@uni.edu", "4/0Alimit", "", nat).await;
    assert_eq!(r.status(), 200, "{}", text(&r));
    // Another address has its own count.
    let r = request_vm_with(&f, "a3@uni.edu", "4/0Alimit", "", "198.51.100.10").await;
    assert_eq!(r.status(), 200, "{}", text(&r));
}

/// A burst from one address gets exactly its limit of new seats, however many run at
/// once (the count is reserved atomically before assigning).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_burst_from_one_address_gets_exactly_its_limit() {
    let f = std::sync::Arc::new(setup(false).await);
    add_free_vms(&f.client, 12).await;
    let r = set_gate(&f, &[("seats_per_address", "3")]).await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                request_vm_with(&f, &format!("burst{i}@uni.edu"), "4/0Aburst", "", "198.51.100.77")
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [[200; 3].as_slice(), [429; 9].as_slice()].concat());
    let assigned: i64 = f
        .client
        .query_one("SELECT count(*) FROM vms WHERE user_email LIKE 'burst%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(assigned, 3);
}

#[tokio::test]
async fn the_workshop_settings_refuse_bad_input_and_change_nothing() {
    let f = setup(false).await;
    let (session, csrf) = log_in(&f).await;
    let before = snapshot(&f.client).await;
    for (fields, why) in [
        (vec![("participants", "ok@uni.edu broken@@uni")], "broken@@uni"),
        (
            vec![("seats_per_address", "0")],
            "seats_per_address must be a number from 1",
        ),
        (
            vec![("window_minutes", "99999")],
            "window_minutes must be a number from 1 to 1440",
        ),
        (vec![("access_code", "a\u{7}b")], "control characters"),
        (vec![("action", "explode")], "action must be save or defaults"),
    ] {
        let r = set_gate_as(f.state_for("admin-workshop"), &session, &csrf, &fields).await;
        assert_eq!(r.status(), 400, "{fields:?}");
        assert!(text(&r).contains(why), "{fields:?}: {}", text(&r));
        assert_eq!(snapshot(&f.client).await, before, "{fields:?} changed data");
    }
}

/// A config whose admin console answers only `cidrs`.
fn with_cidrs(state: &AppState, cidrs: &str) -> AppState {
    let mut config = state.config.clone();
    config.admin_cidrs = Some(lablink_core::cidr::CidrList::parse(cidrs).unwrap());
    AppState::new(config)
}

#[tokio::test]
async fn the_admin_console_answers_only_its_allowed_networks() {
    let f = setup(false).await;
    let state = with_cidrs(&f.state, "198.51.100.0/24, 2001:db8::/32");
    let outside = "203.0.113.50";
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{}", fixtures::ADMIN_PASSWORD)
        )
    );
    let before = snapshot(&f.client).await;
    // Pages, the login itself, JSON routes with a session or Basic, admin reads of VM
    // routes: all 403 from outside, before any password is checked.
    let mut cases: Vec<(&str, Request)> = vec![
        ("admin-login-page", bare("GET", "/admin/login")),
        (
            "admin-login",
            form_req("/admin/login", "user=admin&password=x&csrf=x", &[]),
        ),
        ("admin-home", fixture("admin-home", "valid")),
        ("admin-instances", fixture("admin-instances", "valid")),
        ("launch", fixture("launch", "valid")),
        ("admin-workshop", fixture("admin-workshop", "valid")),
        (
            "get-vm-status",
            as_caller(fixture("get-vm-status", "valid"), Caller::Admin),
        ),
    ];
    let mut scripted = bare("GET", "/api/vm-status");
    scripted
        .headers_mut()
        .insert(header::AUTHORIZATION, HeaderValue::from_str(&basic).unwrap());
    cases.push(("list-vm-status", scripted));
    for (function, req) in cases {
        let r = route(function).handle(&state, from_ip(req, outside)).await;
        assert_eq!(r.status(), 403, "{function}: {}", text(&r));
        assert!(text(&r).contains("not open to your network"), "{function}");
    }
    assert_eq!(snapshot(&f.client).await, before);
    let failures: i64 = f
        .client
        .query_one("SELECT count(*) FROM admin_login_failures", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 0, "no attempt was even counted");
    // The VM itself is no admin: its own reads still work from anywhere.
    let r = route("get-vm-status")
        .handle(
            &state,
            from_ip(
                as_caller(fixture("get-vm-status", "valid"), Caller::OwnVm),
                outside,
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Inside, the console works as before (IPv4 and IPv6 ranges).
    for inside in ["198.51.100.20", "2001:db8::7"] {
        let r = route("admin-login-page")
            .handle(&state, from_ip(bare("GET", "/admin/login"), inside))
            .await;
        assert_eq!(r.status(), 200, "{inside}");
        let r = route("admin-home")
            .handle(&state, from_ip(fixture("admin-home", "valid"), inside))
            .await;
        assert_eq!(r.status(), 200, "{inside}");
    }
}

/// `req` with these cookies.
fn with_cookie(mut req: Request, cookie: &str) -> Request {
    req.headers_mut()
        .insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
    req
}

/// Whether this session cookie still opens the dashboard.
async fn session_works(state: &AppState, session: &str) -> bool {
    let r = route("admin-home")
        .handle(state, with_cookie(bare("GET", "/admin"), session))
        .await;
    match r.status().as_u16() {
        200 => true,
        303 => false,
        other => panic!("admin-home answered {other}: {}", text(&r)),
    }
}

#[tokio::test]
async fn logout_ends_the_session_at_once_and_everywhere_ends_every_one() {
    let f = setup(false).await;
    let (a, a_csrf) = log_in(&f).await;
    let (b, b_csrf) = log_in(&f).await;
    let (c, _) = log_in(&f).await;
    assert!(session_works(&f.state, &a).await && session_works(&f.state, &b).await);
    let page = text(
        &route("admin-home")
            .handle(f.state_for("admin-home"), with_cookie(bare("GET", "/admin"), &b))
            .await,
    );
    assert!(
        page.contains("id=\"live-sessions\">5<"),
        "3 logins + the 2 fixture sessions"
    );
    // Logging out ends that session on the server: the cookie, kept by an attacker who
    // copied it, no longer works anywhere.
    let r = route("admin-logout")
        .handle(
            &f.state,
            form_req(
                "/admin/logout",
                &format!("csrf={a_csrf}"),
                std::slice::from_ref(&a),
            ),
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(!session_works(&f.state, &a).await, "a's cookie is dead");
    assert!(session_works(&f.state, &b).await, "b is another browser");
    // Everywhere: b ends c and itself.
    let r = route("admin-logout")
        .handle(
            &f.state,
            form_req(
                "/admin/logout",
                &format!("csrf={b_csrf}&everywhere=1"),
                std::slice::from_ref(&b),
            ),
        )
        .await;
    assert_eq!(r.status(), 303);
    assert!(!session_works(&f.state, &b).await && !session_works(&f.state, &c).await);
    // A fresh login works.
    let (d, _) = log_in(&f).await;
    assert!(session_works(&f.state, &d).await);
}

/// One login attempt from `ip`, with `cookies`.
async fn login_from(state: &AppState, ip: &str, password: &str, cookies: &[String]) -> Response<Body> {
    let page = route("admin-login-page")
        .handle(state, from_ip(bare("GET", "/admin/login"), ip))
        .await;
    let mut all = cookies.to_vec();
    all.push(set_cookie(&page, "lablink_login_csrf").unwrap());
    let token = hidden(&text(&page), "csrf");
    route("admin-login")
        .handle(
            state,
            from_ip(
                form_req(
                    "/admin/login",
                    &format!("user=admin&password={password}&csrf={token}"),
                    &all,
                ),
                ip,
            ),
        )
        .await
}

#[tokio::test]
async fn a_guesser_on_many_addresses_locks_new_browsers_out_but_not_the_admins_own() {
    let f = setup(false).await;
    // The admin logged in from this browser before: it holds a device cookie.
    let r = login_from(&f.public, "198.51.100.1", fixtures::ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status(), 303);
    let device = set_cookie(&r, "lablink_device").expect("a device cookie");
    // 50 wrong guesses spread over 10 addresses (5 each, under the address limit).
    for n in 0..50 {
        let r = login_from(&f.public, &format!("203.0.113.{}", n / 5 + 10), "guess", &[]).await;
        assert_eq!(r.status(), 401, "guess {n}");
    }
    // The user is locked for browsers without a device cookie, even with the password.
    let r = login_from(&f.public, "203.0.113.99", fixtures::ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status(), 429, "{}", text(&r));
    // The admin's own browser still gets in (from a new address, too).
    let r = login_from(
        &f.public,
        "192.0.2.44",
        fixtures::ADMIN_PASSWORD,
        std::slice::from_ref(&device),
    )
    .await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    // A stolen device cookie is its own small budget: 10 wrong guesses lock it.
    for n in 0..10 {
        let ip = format!("192.0.2.{}", 100 + n / 5);
        let r = login_from(&f.public, &ip, "guess", std::slice::from_ref(&device)).await;
        assert_eq!(r.status(), 401, "device guess {n}");
    }
    let r = login_from(
        &f.public,
        "192.0.2.200",
        fixtures::ADMIN_PASSWORD,
        std::slice::from_ref(&device),
    )
    .await;
    assert_eq!(r.status(), 429);
    // A device cookie is bound to its user and the session key: a forged one counts
    // as none.
    let forged = device.replacen("lablink_device=d1.", "lablink_device=d1.x", 1);
    let r = login_from(&f.public, "192.0.2.201", fixtures::ADMIN_PASSWORD, &[forged]).await;
    assert_eq!(r.status(), 429, "no valid device cookie: the user's lock applies");
}

#[tokio::test]
async fn a_new_admin_secret_ends_old_sessions_and_passwords_within_the_ttl() {
    let f = setup(false).await;
    let sdk = lablink_testkit::moto::sdk_config();
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let name = format!("lablink-admin-{}", Secret::generate().expose());
    let secret = |hash: &str| {
        serde_json::json!({"user": "admin", "password_hash": hash, "session_key": SESSION_KEY}).to_string()
    };
    sm.create_secret()
        .name(&name)
        .secret_string(secret(admin_hash()))
        .send()
        .await
        .unwrap();
    let mut config = f.state.config.clone();
    config.admin = AdminSource::SecretsManager(name.clone());
    config.admin_secret_ttl = std::time::Duration::from_millis(300);
    let state = AppState::new(config).with_aws(sdk);
    let (session, _) = log_in_on(&state, &state).await;
    assert!(session_works(&state, &session).await);
    // The admin rotates the password (a new hash in the secret).
    let new_password = "a-brand-new-admin-password";
    sm.put_secret_value()
        .secret_id(&name)
        .secret_string(secret(&lablink_web::auth::hash_password(new_password)))
        .send()
        .await
        .unwrap();
    // Until the TTL passes, the copy in hand holds; after it, the new secret rules.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!session_works(&state, &session).await, "the old session ended");
    let r = login_from(&state, "198.51.100.3", fixtures::ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status(), 401, "the old password no longer works");
    let r = login_from(&state, "198.51.100.3", new_password, &[]).await;
    assert_eq!(r.status(), 303, "{}", text(&r));
}

// ---- the fleet's end --------------------------------------------------------------

#[tokio::test]
async fn a_launch_sets_the_fleets_end_and_the_seat_page_announces_it_only_when_near() {
    let f = setup(false).await;
    let (session, csrf) = log_in(&f).await;
    let post = |function: &'static str, path: &'static str, body: String| {
        let session = session.clone();
        let f = &f;
        async move {
            route(function)
                .handle(f.state_for(function), form_req(path, &body, &[session]))
                .await
        }
    };
    let seat = || async {
        let r = route("seat-status")
            .handle(f.state_for("seat-status"), fixture("seat-status", "valid"))
            .await;
        serde_json::from_str::<serde_json::Value>(&text(&r)).unwrap()
    };
    let before = snapshot(&f.client).await;
    for (body, why) in [
        (
            format!("csrf={csrf}&num_vms=1&ends_in_hours=0"),
            "ends_in_hours must be a number from 1 to 168",
        ),
        (
            format!("csrf={csrf}&num_vms=1&ends_at=2020-01-01T00:00:00Z"),
            "ends_at must be in the future",
        ),
        (
            format!("csrf={csrf}&num_vms=1&ends_at=tomorrow"),
            "ends_at must be a time",
        ),
    ] {
        let r = post("launch", "/api/launch", body).await;
        assert_eq!(r.status(), 400, "{why}");
        assert!(text(&r).contains(why), "{}", text(&r));
    }
    assert_eq!(snapshot(&f.client).await, before);
    assert_eq!(
        lablink_db::fleet::end(&f.client).await.unwrap(),
        None,
        "a refused launch sets no end"
    );
    let r = post(
        "launch",
        "/api/launch",
        format!("csrf={csrf}&num_vms=1&ends_in_hours=3"),
    )
    .await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    let (end, by) = lablink_db::fleet::end(&f.client).await.unwrap().expect("an end");
    let hours = (end - chrono::Utc::now()).num_minutes();
    assert!((175..=180).contains(&hours), "{hours} minutes");
    assert_eq!(by, "admin");
    // Hours away: not announced to participants yet.
    assert!(seat().await.get("fleet_ends_at").is_none());
    // The admin brings it within the notice (15 minutes): announced.
    let r = post(
        "admin-fleet-end",
        "/api/admin/fleet-end",
        format!(
            "csrf={csrf}&ends_at={}",
            (chrono::Utc::now() + chrono::Duration::minutes(10))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .await;
    assert_eq!(r.status(), 303, "{}", text(&r));
    assert!(seat().await["fleet_ends_at"].is_string());
    let page = text(
        &route("seat-page")
            .handle(f.state_for("seat-page"), fixture("seat-page", "valid"))
            .await,
    );
    assert!(page.contains("will be shut down at"));
    let home = text(
        &route("admin-home")
            .handle(
                f.state_for("admin-home"),
                with_cookie(bare("GET", "/admin"), &session),
            )
            .await,
    );
    assert!(
        home.contains("id=\"fleet-end-at\""),
        "the dashboard shows the end"
    );
    // Without a fleet there is nothing to schedule.
    lablink_db::fleet::clear_fleet(&f.client).await.unwrap();
    let r = post(
        "admin-fleet-end",
        "/api/admin/fleet-end",
        format!("csrf={csrf}&ends_in_hours=2"),
    )
    .await;
    assert_eq!(r.status(), 409);
}
