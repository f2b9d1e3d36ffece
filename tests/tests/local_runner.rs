//! The local runner (`lablink-local`), run as a person runs it: it launches two local VMs
//! (real client-daemon processes that enroll through `POST /api/enroll`), a participant
//! gets one, the VM's stand-in start-host receives that code and PIN, the VM's log
//! reaches the admin's log API, and Ctrl-C stops every process it started.

use std::path::Path;
use std::time::Duration;

use lablink_e2e::{eventually, workspace_bin};
use lablink_testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_host_logs(dir: &Path) -> String {
    std::fs::read_dir(dir.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("start-host.log")).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_runs_the_product_and_a_participant_gets_a_local_vm() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let (port, holder_port) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(workspace_bin("lablink-local").unwrap())
        .args([
            "--port",
            &port.to_string(),
            "--holder-port",
            &holder_port.to_string(),
            "--vms",
            "2",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .env("DATABASE_URL", &db.url)
        .env("LABLINK_ADMIN_USER", "admin")
        .env("LABLINK_ADMIN_PASSWORD", "local-runner-test-password")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the runner prints ready");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Both VMs enroll and report running.
    eventually("two free VMs", Duration::from_secs(60), || async {
        let v: serde_json::Value = http
            .get(format!("{base}/api/unassigned_vms_count"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["count"] == 2).then_some(())
    })
    .await
    .unwrap();

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
        Some(start_host_logs(state.path())).filter(|s| !s.is_empty())
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
    let pid = child.id().unwrap() as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
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
