//! End to end with real processes: Postgres, the holder binary, three client-daemon
//! binaries with a stand-in start-host that records argv, environment and stdin, and
//! the routes on a real HTTP server. A participant's request reaches exactly the right
//! VM; killing and restarting the holder, assigning while a VM is between polls, and
//! cutting the holder's Postgres connection lose nothing.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lablink_core::domain::{CrdCommand, Email, Pin, VmStatus};
use lablink_db::vms;
use lablink_e2e::{ApiServer, HolderProc, Proc, TestVm, create_vms, eventually, workspace_bin};
use lablink_testkit::TestDb;
use tokio::process::Command;

const STAND_IN: &str = r#"#!/bin/sh
# Stand-in for Chrome Remote Desktop's start-host: records what it was given. Like
# Google's, it refuses root without --user-name.
if [ "$(id -u)" = 0 ]; then
  case " $* " in
    *" --user-name="*) ;;
    *) echo "Must specify the --user-name option when running as root." >&2; exit 1 ;;
  esac
fi
out="$LABLINK_TEST_RECORD"
# A test's trap: once, kill the daemon that started us, before anything is recorded
# (a daemon killed between receiving an assignment and running start-host).
if [ -e "$out.kill-once" ]; then rm -f "$out.kill-once"; kill -9 "$PPID"; exit 1; fi
{
  printf 'argv'; for a in "$@"; do printf '\t%s' "$a"; done; printf '\n'
  if [ "${DISPLAY+set}" = set ]; then printf 'DISPLAY=[%s]\n' "$DISPLAY"; else printf 'DISPLAY unset\n'; fi
  cat
} >> "$out.partial"
mv "$out.partial" "$out.run$(ls "$out".run* 2>/dev/null | wc -l)"
echo "Host registered (stand-in)"
"#;

/// The user running this test.
fn me() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The arguments a daemon running as this test's user adds to start-host's.
fn user_name_arg() -> Vec<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        vec![format!("--user-name={}", me())]
    } else {
        Vec::new()
    }
}

struct Record {
    argv: Vec<String>,
    display: String,
    stdin: Vec<String>,
}

/// Every start-host run recorded for a VM, in order.
fn runs(dir: &Path, host: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{host}.record.run{i}"))) else {
            break;
        };
        let mut lines = text.lines();
        let argv = lines
            .next()
            .unwrap_or("")
            .split('\t')
            .skip(1)
            .map(str::to_owned)
            .collect();
        let display = lines.next().unwrap_or("").to_owned();
        let stdin = lines.map(str::to_owned).collect();
        out.push(Record { argv, display, stdin });
    }
    out
}

fn spawn_daemon(bin: &Path, dir: &Path, vm: &TestVm, api: &str, holder: &str) -> Proc {
    spawn_daemon_with(bin, dir, vm, api, holder, &[])
}

fn spawn_daemon_with(
    bin: &Path,
    dir: &Path,
    vm: &TestVm,
    api: &str,
    holder: &str,
    extra: &[(&str, &std::ffi::OsStr)],
) -> Proc {
    let host = vm.hostname.as_str();
    let state = dir.join(format!("{host}.state"));
    let crd = dir.join(format!("{host}.crd"));
    std::fs::create_dir_all(&crd).unwrap();
    let child = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("LABLINK_API_URL", api)
        .env("LABLINK_HOLDER_URL", holder)
        .env("LABLINK_HOSTNAME", host)
        .env("LABLINK_CREDENTIAL", vm.secret.expose())
        .env("LABLINK_STATE_DIR", &state)
        .env("LABLINK_START_HOST", dir.join("start-host"))
        .env("LABLINK_CRD_CONFIG_DIR", &crd)
        // Short windows: the test sees many re-polls.
        .env("LABLINK_POLL_WAIT_SECONDS", "3")
        .env("LABLINK_NVIDIA_SMI", "/nonexistent/nvidia-smi")
        .env("LABLINK_TEST_RECORD", dir.join(format!("{host}.record")))
        // The desktop user of a host without a workspace: whoever runs the test (as
        // root, the daemon passes it as Google's --user-name).
        .env("LABLINK_DESKTOP_USER", me())
        // The daemon ships its own log (its stderr, below) to POST /api/vm-logs.
        .env("LABLINK_SHIP_LOGS", "")
        .env("LABLINK_DAEMON_LOG_FILE", dir.join(format!("{host}.log")))
        .env("LABLINK_LOG_SINK", "http")
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{host}.log"))).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the client daemon");
    Proc { child }
}

/// The hostname and PIN shown on the success page.
fn success_page_fields(html: &str) -> (String, String) {
    let field = |id: &str| {
        let start = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in {html}"));
        let rest = &html[start..];
        let open = rest.find('>').unwrap() + 1;
        let close = rest[open..].find('<').unwrap();
        rest[open..open + close].trim().to_owned()
    };
    (field("hostname"), field("pin"))
}

const CODE_1: &str = "4/0AVMBsJh1-e2eFirstParticipantCodeXyZ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_reach_exactly_their_vm_across_holder_restarts_and_lost_connections() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let vms_ = create_vms(&client, "lablink-e2e", 3, VmStatus::Initializing)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("start-host");
    std::fs::write(&stand_in, STAND_IN).unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();

    let api = ApiServer::start(&db.config).await.unwrap();
    let mut holder = HolderProc::start(&db.url, "127.0.0.1:0".parse().unwrap(), &[])
        .await
        .unwrap();
    let holder_addr: SocketAddr = holder.addr;
    let daemon_bin = workspace_bin("lablink-client-daemon").unwrap();
    let mut daemons: Vec<Proc> = vms_
        .iter()
        .map(|vm| spawn_daemon(&daemon_bin, dir.path(), vm, &api.url(), &holder.url()))
        .collect();
    let http = reqwest::Client::new();
    let logs = |dir: &Path| -> String {
        vms_.iter()
            .map(|v| {
                let p: PathBuf = dir.join(format!("{}.log", v.hostname));
                format!(
                    "--- {}\n{}",
                    v.hostname,
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    };

    // Every daemon reports running, posts its timings and GPU N/A, and waits.
    let all_running = eventually("three running VMs", Duration::from_secs(20), || async {
        let vms = vms::list_vms(&client).await.ok()?;
        vms.iter()
            .all(|v| {
                v.status == VmStatus::Running && v.container.is_some() && v.healthy.as_deref() == Some("N/A")
            })
            .then_some(())
    })
    .await;
    all_running.unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));

    // Each daemon's own log reaches its VM's log lines through the HTTP sink.
    for vm in &vms_ {
        let url = format!("{}/api/vm-logs/{}?after=0&limit=1000", api.url(), vm.hostname);
        let shipped = eventually("the daemon's log shipped", Duration::from_secs(20), || async {
            let r = http.get(&url).bearer_auth(vm.secret.expose()).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            v["logs"]
                .as_str()
                .filter(|l| l.contains("running"))
                .map(str::to_owned)
        })
        .await;
        shipped.unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    }
    holder
        .wait_for_waiters(&http, 3, Duration::from_secs(10))
        .await
        .unwrap();

    // ---- 1. A participant's request reaches the right daemon within a second.
    let pasted = format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{CODE_1}\" \
         --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
    );
    let t0 = Instant::now();
    let page = http
        .post(format!("{}/api/request_vm", api.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([("email", "ada@example.edu"), ("crd_command", pasted.as_str())])
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page1 = page.text().await.unwrap();
    let (host1, pin1) = success_page_fields(&page1);
    // The seat's own page, by its token (the success page links it).
    let seat1 = page1
        .split("href=\"/seat/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the success page links to the seat's page")
        .to_owned();
    assert_eq!(pin1.len(), 6);
    let ran = eventually(
        "start-host on the assigned VM",
        Duration::from_secs(5),
        || async { (!runs(dir.path(), &host1).is_empty()).then(|| t0.elapsed()) },
    )
    .await
    .unwrap();
    assert!(
        ran < Duration::from_secs(1),
        "start-host ran {ran:?} after the request"
    );
    eprintln!("participant request → start-host ran on {host1} in {ran:?}");
    let r = &runs(dir.path(), &host1)[0];
    let mut want = vec![
        format!("--code={CODE_1}"),
        "--redirect-url=https://remotedesktop.google.com/_/oauthredirect".into(),
        format!("--name={host1}"),
    ];
    want.extend(user_name_arg());
    assert_eq!(r.argv, want);
    assert_eq!(r.display, "DISPLAY=[]");
    assert_eq!(r.stdin, [pin1.clone(), pin1.clone()]);
    // Every daemon waits again, the assigned one too (for a fresh code or a release).
    holder
        .wait_for_waiters(&http, 3, Duration::from_secs(10))
        .await
        .unwrap();
    for v in &vms_ {
        if v.hostname.as_str() != host1 {
            assert!(runs(dir.path(), v.hostname.as_str()).is_empty());
        }
    }
    let delivered = eventually("the delivery recorded", Duration::from_secs(5), || async {
        let vm = vms::get_vm(&client, &host1.parse().unwrap()).await.ok()??;
        vm.delivered_at
    })
    .await;
    delivered.unwrap();

    // ---- 2. Kill the holder while two daemons wait; assign while it is down (both
    // daemons are between polls); restart it on the same address.
    holder.proc.kill().await;
    let assign = |n: u32| {
        let client = &client;
        async move {
            let email = Email::parse(&format!("p{n}@example.edu")).unwrap();
            let cmd = CrdCommand::from_code(&format!("4/0AVMBsJh1-e2eParticipant{n}")).unwrap();
            let pin = Pin::generate();
            let a = vms::assign(client, &email, &cmd, &pin)
                .await
                .unwrap()
                .expect("a free VM");
            (
                a.hostname.to_string(),
                pin.as_str().to_owned(),
                cmd.code().to_owned(),
            )
        }
    };
    let (host2, pin2, code2) = assign(2).await;
    holder = HolderProc::start(&db.url, holder_addr, &[]).await.unwrap();
    let got2 = eventually(
        "start-host after the holder restart",
        Duration::from_secs(30),
        || async { runs(dir.path(), &host2).into_iter().next() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    assert_eq!(got2.argv[0], format!("--code={code2}"));
    assert_eq!(got2.argv[2], format!("--name={host2}"));
    assert_eq!(got2.stdin, [pin2.clone(), pin2.clone()]);

    // ---- 3. Cut the holder's Postgres connection and assign at once: the holder
    // reconnects and re-checks its waiter, or the daemon's next poll finds it.
    holder
        .wait_for_waiters(&http, 3, Duration::from_secs(30))
        .await
        .unwrap();
    let killed = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'lablink-holder'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1, "the holder keeps exactly one listening connection");
    let (host3, pin3, code3) = assign(3).await;
    let got3 = eventually(
        "start-host after the lost connection",
        Duration::from_secs(30),
        || async { runs(dir.path(), &host3).into_iter().next() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    assert_eq!(got3.argv[0], format!("--code={code3}"));
    assert_eq!(got3.stdin, [pin3.clone(), pin3.clone()]);

    // Three distinct VMs, each ran start-host exactly once.
    let mut hosts = vec![host1.clone(), host2.clone(), host3.clone()];
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3);
    // Each acknowledged its assignment: all three wait, none is handed one again.
    holder
        .wait_for_waiters(&http, 3, Duration::from_secs(10))
        .await
        .unwrap();

    // ---- 4. A restarted daemon neither re-runs nor loses its assignment.
    let i1 = vms_.iter().position(|v| v.hostname.as_str() == host1).unwrap();
    daemons[i1].kill().await;
    daemons[i1] = spawn_daemon(&daemon_bin, dir.path(), &vms_[i1], &api.url(), &holder.url());
    let log = dir.path().join(format!("{host1}.log"));
    eventually(
        "the restarted daemon to settle",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("was run before")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    for h in &hosts {
        assert_eq!(runs(dir.path(), h).len(), 1, "{h} ran start-host once");
    }

    // ---- 5. The same participant with a fresh code: from the start page (email only)
    // it is refused while the desktop is connected (anyone may know an email); from the
    // seat's page (its token) it reaches the same VM. Its daemon is killed after
    // receiving it, before start-host ran; restarted, it runs start-host with the new
    // code exactly once and the delivery is acknowledged.
    std::fs::write(dir.path().join(format!("{host1}.record.kill-once")), "").unwrap();
    // Past the seat's 20 s between codes.
    client
        .execute(
            "UPDATE vms SET code_changed_at = now() - interval '1 minute' WHERE hostname = $1",
            &[&host1],
        )
        .await
        .unwrap();
    let request = |email: &'static str, code: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/request_vm", api.url());
        async move {
            let pasted = format!(
                "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" \
                 --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
            );
            let page = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    serde_urlencoded::to_string([("email", email), ("crd_command", pasted.as_str())])
                        .unwrap(),
                )
                .send()
                .await
                .unwrap();
            (page.status().as_u16(), page.text().await.unwrap())
        }
    };
    const FRESH: &str = "4/0AVMBsJh1-e2eFreshCodeForAnotherGoogleAccount";
    let (status, page) = request("ada@example.edu", FRESH).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("seat's page"), "{page}");
    assert_eq!(runs(dir.path(), &host1).len(), 1);
    let fresh_command = format!(
        "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{FRESH}\" --name=$(hostname)"
    );
    let sent = http
        .post(format!("{}/api/seat/{seat1}/code", api.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("crd_command", fresh_command.as_str())]).unwrap())
        .send()
        .await
        .unwrap();
    // The redirect to the seat's page is followed: it shows the seat connecting again.
    assert_eq!(sent.status(), 200);
    assert!(sent.url().path().starts_with("/seat/"), "{}", sent.url());
    let page = sent.text().await.unwrap();
    let (again_host, new_pin) = success_page_fields(&page);
    assert_eq!(again_host, host1);
    let exited = tokio::time::timeout(Duration::from_secs(10), daemons[i1].child.wait()).await;
    assert!(
        exited.is_ok(),
        "the daemon was not killed before start-host ran\n{}",
        logs(dir.path())
    );
    assert_eq!(runs(dir.path(), &host1).len(), 1, "nothing ran before the kill");
    daemons[i1] = spawn_daemon(&daemon_bin, dir.path(), &vms_[i1], &api.url(), &holder.url());
    let second = eventually(
        "start-host with the fresh code",
        Duration::from_secs(20),
        || async { runs(dir.path(), &host1).into_iter().nth(1) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    assert_eq!(second.argv[0], format!("--code={FRESH}"));
    assert_eq!(second.stdin, [new_pin.clone(), new_pin.clone()]);
    let h1 = lablink_core::domain::Hostname::parse(&host1).unwrap();
    eventually("the fresh code acknowledged", Duration::from_secs(10), || async {
        let vm = vms::get_vm(&client, &h1).await.ok()??;
        (vm.acknowledged_at.is_some() && vm.start_host.is_some_and(|r| r.ok)).then_some(())
    })
    .await
    .unwrap();
    // Acknowledged: no poll hands it over again, so it never runs twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(runs(dir.path(), &host1).len(), 2, "the fresh code ran once");

    // ---- 6. The admin releases that VM: its daemon resets (the registration goes), it
    // rejoins the pool, and the next participant's code reaches it.
    let released = lablink_db::seats::release(&client, &h1, false, "admin")
        .await
        .unwrap();
    assert!(
        matches!(released, lablink_db::seats::ActionOutcome::Done { .. }),
        "{released:?}"
    );
    eventually(
        "the released VM back in the pool",
        Duration::from_secs(20),
        || async { (vms::free_seat_count(&client).await.ok()? == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    const NEXT: &str = "4/0AVMBsJh1-e2eTheNextParticipantsCode";
    let (status, page) = request("grace@example.edu", NEXT).await;
    assert_eq!(status, 200, "{page}");
    let (next_host, next_pin) = success_page_fields(&page);
    assert_eq!(next_host, host1);
    let third = eventually(
        "start-host for the next participant",
        Duration::from_secs(10),
        || async { runs(dir.path(), &host1).into_iter().nth(2) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(dir.path())));
    assert_eq!(third.argv[0], format!("--code={NEXT}"));
    assert_eq!(third.stdin, [next_pin.clone(), next_pin]);
    holder.proc.terminate(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_report_in_use_and_a_missing_start_host_as_an_error() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let vms_ = create_vms(&client, "lablink-mon", 2, VmStatus::Initializing)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("start-host"), STAND_IN).unwrap();
    std::fs::set_permissions(
        dir.path().join("start-host"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let api = ApiServer::start(&db.config).await.unwrap();
    let holder = HolderProc::start(&db.url, "127.0.0.1:0".parse().unwrap(), &[])
        .await
        .unwrap();
    let bin = workspace_bin("lablink-client-daemon").unwrap();

    // The subject software: `sleep` under a name no other process on this machine has.
    let subject = format!("e2e-subject-{}", std::process::id());
    let subject_path = dir.path().join(&subject);
    std::os::unix::fs::symlink(
        std::fs::canonicalize("/bin/sleep").unwrap_or_else(|_| "/usr/bin/sleep".into()),
        &subject_path,
    )
    .unwrap();
    let _watcher = spawn_daemon_with(
        &bin,
        dir.path(),
        &vms_[0],
        &api.url(),
        &holder.url(),
        &[
            ("LABLINK_SUBJECT_SOFTWARE", subject.as_ref()),
            ("LABLINK_INUSE_INTERVAL_SECONDS", "1".as_ref()),
        ],
    );
    let missing = dir.path().join("no-such-start-host");
    let _broken = spawn_daemon_with(
        &bin,
        dir.path(),
        &vms_[1],
        &api.url(),
        &holder.url(),
        &[("LABLINK_START_HOST", missing.as_os_str())],
    );

    let in_use = |want: bool| {
        let client = &client;
        let host = vms_[0].hostname.clone();
        async move {
            eventually(&format!("in_use = {want}"), Duration::from_secs(15), || async {
                let vm = vms::get_vm(client, &host).await.ok()??;
                (vm.status == VmStatus::Running && vm.in_use == want).then_some(())
            })
            .await
        }
    };
    // Not in use until the software runs; in use while it runs; not after.
    in_use(false).await.unwrap();
    let mut software = std::process::Command::new(&subject_path)
        .arg("60")
        .spawn()
        .unwrap();
    in_use(true).await.unwrap();
    software.kill().unwrap();
    software.wait().unwrap();
    in_use(false).await.unwrap();

    let vm = eventually(
        "the broken VM to report its error",
        Duration::from_secs(15),
        || async {
            let vm = vms::get_vm(&client, &vms_[1].hostname).await.ok()??;
            (vm.status == VmStatus::Error).then_some(vm)
        },
    )
    .await
    .unwrap();
    let reason = vm.status_reason.unwrap_or_default();
    assert!(reason.contains("no-such-start-host"), "{reason}");
    // An errored VM is not offered to participants.
    assert_eq!(vms::free_seat_count(&client).await.unwrap(), 1);
}
