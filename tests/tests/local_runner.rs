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
    // None of this runner's VMs is left (other tests' VMs may run meanwhile).
    let left = stack_pids(&state);
    assert!(left.is_empty(), "processes left: {left:?}");
}

fn stack_pids(state: &tempfile::TempDir) -> Vec<i32> {
    let mine = format!("LABLINK_STATE_DIR={}", state.path().display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|b| *b == 0)
                .any(|kv| kv.starts_with(mine.as_bytes()))
                .then_some(pid)
        })
        .collect()
}

/// A runner killed outright (a crash, `kill -9`) takes its local VMs with it: no daemon
/// is left polling an API that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_leaves_no_local_vm_behind() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let stack = LocalStack::start(&db.url, state.path(), 1, ("admin", "kill-test-password"))
        .await
        .unwrap();
    stack.wait_for_free_vms(1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(stack_pids(&state).len(), 1, "one daemon runs");
    stack.kill().await;
    eventually(
        "the daemon exits with its runner",
        Duration::from_secs(15),
        || async { stack_pids(&state).is_empty().then_some(()) },
    )
    .await
    .unwrap();
}
