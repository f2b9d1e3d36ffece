//! The product's main flow in a real browser (headless Chromium, Debian's, driven by
//! `tests/browser/flow.mjs` through playwright-core) against the local runner:
//! a participant sees the live count, pastes a CRD command and gets a hostname and PIN;
//! the admin logs in, finds the VM assigned with its startup chart, reads its logs,
//! launches one more VM and watches the job finish, while a second participant's page
//! shows the new free VM without a reload; then the admin exports the participants' data
//! from the dashboard's button and gets the zip. The participant's first code is refused
//! (expired): the seat's live page says so and takes a fresh one, which reaches the same
//! VM; at the end the admin reassigns the seat from the VM's row and the participant's
//! page says so. Outside the browser, the test then checks that the VM's stand-in
//! start-host received the fresh code and its PIN.
//!
//! `scripts/test` installs Chromium and the npm packages when they are missing; run
//! `scripts/test` (or `scripts/ensure-browser`) before a bare `cargo test`. Screenshots of
//! every page land in `target/browser/`.

use std::path::PathBuf;
use std::time::Duration;

use lablink_e2e::{LocalStack, repo_root};
use lablink_testkit::TestDb;

const ADMIN: (&str, &str) = ("admin", "browser-test-password-9f2c");

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_and_admin_flows_in_headless_chromium() {
    let driver = repo_root().join("tests/browser");
    assert!(
        chromium().is_file() && driver.join("node_modules/playwright-core").is_dir(),
        "Chromium ({}) or playwright-core is missing: run scripts/ensure-browser (scripts/test does)",
        chromium().display()
    );
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let stack = LocalStack::start(&db.url, state.path(), 1, ADMIN).await.unwrap();
    stack.wait_for_free_vms(1, Duration::from_secs(60)).await.unwrap();

    let shots = repo_root().join("target/browser");
    let _ = std::fs::remove_dir_all(&shots);
    let code = "4/0AVGzR1Dq8kBrowserTestPasteXyZ_-7Lm";
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .arg(driver.join("flow.mjs"))
            .env("LABLINK_URL", &stack.url)
            .env("LABLINK_ADMIN_USER", ADMIN.0)
            .env("LABLINK_ADMIN_PASSWORD", ADMIN.1)
            .env("LABLINK_CRD_CODE", code)
            .env("LABLINK_SHOTS", &shots)
            .env("CHROMIUM", chromium())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser flow finishes within 4 minutes")
    .unwrap();
    assert!(
        out.status.success(),
        "the browser flow failed (screenshots in {}):\n{}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (host, pin) = (seen["hostname"].as_str().unwrap(), seen["pin"].as_str().unwrap());

    // What the participant's browser showed is what reached the VM.
    let record = stack.start_host_logs();
    assert!(record.contains(&format!("--code={code}")), "{record}");
    assert!(record.contains(&format!("--name={host}")), "{record}");
    assert!(
        record.contains(&format!("pin: {pin} | pin again: {pin}")),
        "{record}"
    );

    for page in [
        "01-participant-form",
        "02-participant-refused",
        "02-participant-success",
        "03-admin-dashboard",
        "04-admin-instances",
        "05-admin-logs",
        "06-admin-job",
        "07-participant-count-rose",
        "08-admin-instances-after-launch",
        "09-admin-export",
        "10-participant-reassigned",
        "11-admin-reassigned",
    ] {
        let png = std::fs::read(shots.join(format!("{page}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2000, "{page}.png");
    }

    let status = stack.interrupt(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");
}
