//! The local runner (`lablink-local`), run as a person runs it: it launches two local VMs
//! (real client-daemon processes that enroll through `POST /api/enroll`), a participant
//! gets one, the VM's stand-in start-host receives that code and PIN, the VM's log
//! reaches the admin's log API, and Ctrl-C stops every process it started. With
//! `--client-image` each local VM runs a real workspace container on this machine's
//! Docker engine; without an engine the runner says how to start one.

use std::time::Duration;

use lablink_e2e::{LocalStack, docker, eventually};
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
    let (host, pin) = request_vm(&base, "ada@uni.edu", code).await;
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

    // The VM's own log (shipped over HTTP) shows it ran, to the admin, without secrets.
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
            // The daemon logs start-host's output with the code and PIN removed.
            let logs = v["logs"].as_str()?;
            assert!(!logs.contains(code), "the code must not reach the logs");
            logs.contains("start-host args: --code=<code>").then_some(())
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
    // The daemons themselves: their short-lived children (GPU and in-use checks)
    // inherit the environment too and may be caught running, so only processes whose
    // parent is not one of them count.
    let all = stack_pids(&state);
    let parent = |pid: &i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: the comm may hold spaces, so read after its `)`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
    };
    let daemons: Vec<i32> = all
        .iter()
        .copied()
        .filter(|pid| parent(pid).is_none_or(|pp| !all.contains(&pp)))
        .collect();
    assert_eq!(daemons.len(), 1, "one daemon runs: {daemons:?}");
    stack.kill().await;
    eventually(
        "the daemon exits with its runner",
        Duration::from_secs(15),
        || async { stack_pids(&state).is_empty().then_some(()) },
    )
    .await
    .unwrap();
}

/// The participant's request on the local runner's form; (hostname, PIN) from the page.
async fn request_vm(base: &str, email: &str, code: &str) -> (String, String) {
    let command = format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" \
         --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    );
    let page = reqwest::Client::new()
        .post(format!("{base}/api/request_vm"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("email", email), ("crd_command", command.as_str())]).unwrap())
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
    (field("hostname"), field("pin"))
}

/// This runner's workspace containers (by the label the runner gives them).
fn runner_containers(state: &std::path::Path) -> Vec<String> {
    let filter = format!(
        "label=lablink.local-runner={}/vms",
        state.canonicalize().unwrap().display()
    );
    let names = docker(&["ps", "--all", "--filter", &filter, "--format", "{{.Names}}"]);
    let mut v: Vec<String> = names.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_image_each_local_vm_runs_a_workspace_and_the_admin_sees_start_host() {
    let image = lablink_e2e::test_client_image();
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let script = state.path().join("startup.sh");
    std::fs::write(&script, "#!/bin/sh\necho ready > /var/tmp/startup-ran\n").unwrap();
    let admin = ("admin", "local-workspace-password");
    let stack = LocalStack::start_full(
        &db.url,
        state.path(),
        2,
        admin,
        &[],
        &[
            "--client-image",
            &image,
            "--startup-script",
            script.to_str().unwrap(),
            "--startup-on-error",
            "fail",
            "--subject-software",
            "sleap",
        ],
    )
    .await
    .unwrap();
    let base = stack.url.clone();
    if let Err(e) = stack.wait_for_free_vms(2, Duration::from_secs(180)).await {
        let logs: String = std::fs::read_dir(state.path().join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| {
                let log = std::fs::read_to_string(d.path().join("daemon.log")).unwrap_or_default();
                format!("--- {}\n{log}", d.path().display())
            })
            .collect();
        panic!("{e}\n{logs}");
    }

    // One workspace container per VM, labelled with its hostname, the script run in it.
    let hosts: Vec<String> = stack.vms().into_iter().map(|(h, _)| h).collect();
    assert_eq!(hosts.len(), 2);
    let want: Vec<String> = hosts.iter().map(|h| format!("lablink-workspace-{h}")).collect();
    assert_eq!(runner_containers(state.path()), want);
    for h in &hosts {
        let labelled = docker(&[
            "ps",
            "--filter",
            &format!("label=lablink.hostname={h}"),
            "--format",
            "{{.Names}}",
        ]);
        assert_eq!(labelled, format!("lablink-workspace-{h}"));
        assert_eq!(
            docker(&["exec", &labelled, "cat", "/var/tmp/startup-ran"]),
            "ready"
        );
    }

    // A participant's code reaches start-host inside the assigned VM's workspace, run as
    // `client`; the admin's instances page shows how it ended.
    let code = "4/0AanRJrjkgQxYzLocalWorkspace_-7";
    let (host, pin) = request_vm(&base, "grace@uni.edu", code).await;
    let ctr = format!("lablink-workspace-{host}");
    let run = eventually("start-host in the workspace", Duration::from_secs(30), || async {
        let out = std::process::Command::new("docker")
            .args(["exec", &ctr, "cat", "/tmp/start-host-runs.log"])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
    })
    .await
    .unwrap();
    assert!(
        run.starts_with("user=client home=/home/client display=[] "),
        "{run}"
    );
    assert!(
        run.contains(&format!("--code={code} ")) && run.contains(&format!("--name={host} ")),
        "{run}"
    );
    assert!(run.ends_with(&format!("pin1={pin} pin2={pin}")), "{run}");
    // What the admin's instances page shows for it (the browser test reads the page).
    let client = db.client().await;
    let hostname = lablink_core::domain::Hostname::parse(&host).unwrap();
    let vm = eventually(
        "start-host's outcome recorded",
        Duration::from_secs(20),
        || async {
            lablink_db::vms::get_vm(&client, &hostname)
                .await
                .ok()?
                .filter(|v| v.start_host.is_some())
        },
    )
    .await
    .unwrap();
    let outcome = vm.start_host.unwrap();
    assert!(outcome.ok && outcome.exit_code == Some(0), "{outcome:?}");
    assert!(
        vm.startup_script.is_some() && vm.image_pull.is_some(),
        "the workspace's timings"
    );
    // The outcome (the seat `ready`) came once Chrome Remote Desktop's host ran: started
    // the CRD 148 way (`--start --new-session`) as `client`, from this code's registration.
    let host_runs = docker(&[
        "exec",
        &ctr,
        "pgrep",
        "-u",
        "client",
        "-f",
        "chrome-remote-desktop --start --new-session",
    ]);
    assert_eq!(host_runs.lines().count(), 1, "{host_runs}");
    let starts = docker(&["exec", &ctr, "cat", "/tmp/crd-host-starts.log"]);
    assert!(
        starts.starts_with("user=client args=--start --new-session config="),
        "{starts}"
    );

    // Ctrl-C takes the workspaces with the VMs.
    let status = stack.interrupt(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(runner_containers(state.path()), Vec::<String>::new());
    for h in &hosts {
        let vols = docker(&[
            "volume",
            "ls",
            "--quiet",
            "--filter",
            &format!("name=lablink-home-{h}"),
        ]);
        assert!(vols.is_empty(), "volume of {h} left: {vols}");
    }
}

#[tokio::test]
async fn with_a_client_image_and_no_docker_engine_the_runner_says_how_to_start_one() {
    let state = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(lablink_e2e::workspace_bin("lablink-local").unwrap())
        .args(["--port", &lablink_e2e::free_port().to_string(), "--vms", "1"])
        .args(["--client-image", "ghcr.io/talmolab/lablink-client-base-image:v1"])
        .arg("--state-dir")
        .arg(state.path())
        .env("DATABASE_URL", "postgres://127.0.0.1:1/unused")
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", state.path().display()),
        )
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("needs a Docker engine and none answers") && last.contains("systemctl start docker"),
        "{err}"
    );
}
