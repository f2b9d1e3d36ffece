//! The smoke test `scripts/deploy` ends a deploy with (`--smoke-test URL` runs it alone),
//! against the local runner, which serves the same routes and passes `POST /vm_startup`
//! to the holder as API Gateway does: the API's health, the holder's route answering 401
//! without a credential, and the admin login with the password; then the refusals a
//! broken deployment gets, each naming what failed.

use std::process::Command;

use lablink_e2e::{LocalStack, repo_root};
use lablink_testkit::TestDb;

fn smoke(url: &str, user: &str, password: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(repo_root().join("scripts/deploy"));
    cmd.args(["--smoke-test", url, "--admin-user", user])
        .env_remove("LABLINK_ADMIN_PASSWORD");
    if let Some(p) = password {
        cmd.env("LABLINK_ADMIN_PASSWORD", p);
    }
    let out = cmd.output().expect("run scripts/deploy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_smoke_test_passes_on_a_working_deployment_and_names_what_fails() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let admin = ("admin", "smoke-test-password");
    let stack = LocalStack::start(&db.url, state.path(), 0, admin).await.unwrap();

    let (ok, out, err) = smoke(&stack.url, admin.0, Some(admin.1));
    assert!(ok, "{out}{err}");
    assert!(out.contains("API: health ok"), "{out}");
    assert!(out.contains("holder: reached"), "{out}");
    assert!(out.contains("admin login: 'admin' logged in"), "{out}");

    // Without the password, the page alone.
    let (ok, out, err) = smoke(&stack.url, admin.0, None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("login not tried"), "{out}");

    // A wrong password is a failed smoke test, named.
    let (ok, _, err) = smoke(&stack.url, admin.0, Some("not-the-password"));
    assert!(!ok);
    assert!(err.contains("logging in as 'admin' answered 401"), "{err}");

    // Nothing listening: the health check names the failure.
    drop(stack);
    let gone = format!("http://127.0.0.1:{}", lablink_e2e::free_port());
    let (ok, _, err) = smoke(&gone, admin.0, None);
    assert!(!ok);
    assert!(err.contains("GET /api/health"), "{err}");
}
