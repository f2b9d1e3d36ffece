//! The local runner (`lablink-local`), run as a person runs it: it launches two local VMs
//! (real client-daemon processes that enroll through `POST /api/enroll`), a participant
//! gets one, the VM's stand-in start-host receives that code and PIN, the VM's log
//! reaches the admin's log API, and Ctrl-C stops every process it started.

use std::time::Duration;

use lablink_e2e::{LocalStack, eventually};
use lablink_testkit::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_runs_the_product_and_a_participant_gets_a_local_vm() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let stack = LocalStack::start(&db.url, state.path(), 2, ("admin", "local-runner-test-password"))
        .await
        .unwrap();
    let base = stack.url.clone();
    let http = reqwest::Client::new();

    // Both VMs enroll and report running.
    stack.wait_for_free_vms(2, Duration::from_secs(60)).await.unwrap();

    let code = "4/0AanRJrjkgQxYzLocalRunner_-42";
    let command = format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" \
         --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    );
    let page = http
        .post(format!("{base}/api/request_vm"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("email", "ada@uni.edu"), ("crd_command", command.as_str())])
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let field = |id: &str| {
        let at = page.find(&format!("id=\"{id}\">")).unwrap() + id.len() + 6;
        page[at..at + page[at..].find('<').unwrap()].to_owned()
    };
    let (host, pin) = (field("hostname"), field("pin"));
    let record = eventually("start-host ran", Duration::from_secs(30), || async {
        Some(stack.start_host_logs()).filter(|s| !s.is_empty())
    })
    .await
    .unwrap();
    assert!(record.contains(&format!("--code={code}")), "{record}");
    assert!(record.contains(&format!("--name={host}")), "{record}");
    assert!(
        record.contains(&format!("pin: {pin} | pin again: {pin}")),
        "{record}"
    );

    // The VM's own log (shipped over HTTP) shows it, to the admin.
    eventually(
        "the VM's log shows start-host",
        Duration::from_secs(30),
        || async {
            let v: serde_json::Value = http
                .get(format!("{base}/api/vm-logs/{host}?after=0&limit=5000"))
                .basic_auth("admin", Some("local-runner-test-password"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["logs"].as_str().filter(|l| l.contains(code)).map(drop)
        },
    )
    .await
    .unwrap();

    // Ctrl-C stops the runner and its VMs.
    let status = stack.interrupt(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");
    let left = std::process::Command::new("pgrep")
        .args(["-f", "lablink-local client-daemon"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
