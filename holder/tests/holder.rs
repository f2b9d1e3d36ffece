//! The holder in-process against a real Postgres, over real HTTP: auth and bad input,
//! immediate delivery of an assignment made while the VM was away, waking by NOTIFY,
//! newest waiter wins, abandoned waits freed, reconnect re-check, several holders,
//! legacy mode, shutdown, and the export long-poll.

use std::time::{Duration, Instant};

use lablink_core::credential::Secret;
use lablink_core::domain::{CrdCommand, Email, Hostname, Pin, VmStatus};
use lablink_db::vms;
use lablink_holder::{HolderConfig, Running};
use lablink_testkit::TestDb;
use tokio::io::AsyncWriteExt;

struct Vm {
    host: Hostname,
    secret: Secret,
}

async fn setup(n: usize) -> (TestDb, tokio_postgres::Client, Vec<Vm>) {
    let db = TestDb::new().await;
    let client = db.client().await;
    let made: Vec<Vm> = (0..n)
        .map(|i| Vm {
            host: Hostname::parse(&format!("hold-{i}")).unwrap(),
            secret: Secret::generate(),
        })
        .collect();
    let new: Vec<vms::NewVm> = made
        .iter()
        .map(|v| vms::NewVm {
            hostname: v.host.clone(),
            instance_id: None,
            credential_hash: Some(v.secret.hash()),
            status: VmStatus::Running,
            provision: None,
        })
        .collect();
    vms::create_vms(&client, &new).await.unwrap();
    (db, client, made)
}

async fn start(db: &TestDb, extra: &[(&str, &str)]) -> Running {
    let mut pairs = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("PGSSLMODE", "disable"),
        ("LABLINK_HOLDER_ADDR", "127.0.0.1:0"),
    ];
    pairs.extend_from_slice(extra);
    let mut s = lablink_core::config::Settings::from_pairs(&pairs);
    let cfg = HolderConfig::read(&mut s);
    let cfg = s.finish(|| cfg.unwrap()).unwrap();
    let running = lablink_holder::start(cfg).await.unwrap();
    // Wait until it listens, so tests do not race the first connection.
    let mut gen_rx = running.holder.link.subscribe();
    tokio::time::timeout(Duration::from_secs(10), gen_rx.wait_for(|g| *g >= 1))
        .await
        .expect("the holder connects within 10 s")
        .unwrap();
    running
}

fn url(r: &Running, wait: Option<&str>) -> String {
    match wait {
        Some(w) => format!("http://{}/vm_startup?wait={w}", r.addr),
        None => format!("http://{}/vm_startup", r.addr),
    }
}

async fn poll(
    http: &reqwest::Client,
    r: &Running,
    host: &str,
    token: Option<&str>,
    wait: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = http
        .post(url(r, wait))
        .json(&serde_json::json!({ "hostname": host }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A poll running in the background: (status, body, when the answer arrived).
fn spawn_poll(
    http: &reqwest::Client,
    r: &Running,
    vm: &Vm,
    wait: &str,
) -> tokio::task::JoinHandle<(u16, String, Instant)> {
    let (http, url, host, token) = (
        http.clone(),
        url(r, Some(wait)),
        vm.host.to_string(),
        vm.secret.expose().to_owned(),
    );
    tokio::spawn(async move {
        let resp = http
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "hostname": host }))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap(), Instant::now())
    })
}

async fn assign(client: &tokio_postgres::Client, n: u32) -> (Hostname, Pin, String) {
    let email = Email::parse(&format!("p{n}@example.edu")).unwrap();
    let cmd = CrdCommand::from_code(&format!("4/0AholderTest{n}")).unwrap();
    let pin = Pin::generate();
    let a = vms::assign(client, &email, &cmd, &pin).await.unwrap().unwrap();
    (a.hostname, pin, cmd.normalized())
}

async fn delivered(client: &tokio_postgres::Client, host: &Hostname) -> bool {
    for _ in 0..100 {
        if vms::get_vm(client, host)
            .await
            .unwrap()
            .unwrap()
            .delivered_at
            .is_some()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_clear_4xx() {
    let (db, _client, vms_) = setup(2).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let (host, own, other) = (
        vms_[0].host.as_str(),
        vms_[0].secret.expose(),
        vms_[1].secret.expose(),
    );

    assert_eq!(poll(&http, &r, host, None, Some("1")).await.0, 401);
    assert_eq!(poll(&http, &r, host, Some(other), Some("1")).await.0, 403);
    // An unknown hostname answers exactly as a known one with another's credential (no
    // way to list the fleet's hostnames).
    let ghost = poll(&http, &r, "ghost", Some(own), Some("1")).await;
    assert_eq!(ghost, poll(&http, &r, host, Some(other), Some("1")).await);
    assert_eq!(ghost.0, 403);
    assert_eq!(poll(&http, &r, "ghost", None, Some("1")).await.0, 401);
    assert_eq!(poll(&http, &r, "bad host!", Some(own), Some("1")).await.0, 400);
    let (status, body) = poll(&http, &r, host, Some(own), Some("soon")).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("wait"), "{body}");
    let resp = http
        .post(url(&r, Some("1")))
        .bearer_auth(own)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let big = format!(r#"{{"hostname":"{host}","pad":"{}"}}"#, "x".repeat(10_000));
    let resp = http
        .post(url(&r, Some("1")))
        .bearer_auth(own)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = http.get(url(&r, None)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    // Nothing registered by any refusal.
    assert!(r.holder.registry.is_empty());

    // The window ends with 204 and no body; ?wait= over the maximum is capped.
    let t = Instant::now();
    let (status, _) = poll(&http, &r, host, Some(own), Some("1")).await;
    assert_eq!(status, 204);
    assert!(t.elapsed() >= Duration::from_millis(900));
    r.shutdown().await.unwrap();
}

/// Delivery is acknowledged: a credentialed poll is handed its assignment again until
/// the daemon reports start-host's outcome naming it (a lost response, a daemon killed
/// before it ran start-host), and never after.
#[tokio::test]
async fn an_assignment_made_while_away_is_answered_at_once_and_again_until_its_outcome_is_reported() {
    let (db, client, vms_) = setup(1).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let (host, pin, command) = assign(&client, 1).await;
    assert_eq!(host, vms_[0].host);
    let t = Instant::now();
    let (status, body) = poll(
        &http,
        &r,
        host.as_str(),
        Some(vms_[0].secret.expose()),
        Some("30"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(body["status"], "success");
    assert_eq!(body["pin"], pin.as_str());
    assert_eq!(body["command"], command.as_str());
    assert!(delivered(&client, &host).await);
    // Delivered but not acknowledged: the same assignment again, at once.
    let secret = vms_[0].secret.expose();
    let (status, again) = poll(&http, &r, host.as_str(), Some(secret), Some("1")).await;
    assert_eq!(status, 200);
    assert_eq!(again, body);
    // The daemon's report of the outcome names it: from then on the poll waits (here:
    // a 1 s window).
    let key = lablink_wire::assignment_key(host.as_str(), pin.as_str(), &command);
    let report = lablink_db::vms::StartHostReport {
        ok: true,
        exit_code: Some(0),
        output: "",
        assignment: Some(&key),
    };
    lablink_db::vms::set_status_after_start_host(
        &client,
        &host,
        lablink_core::domain::VmStatus::Running,
        None,
        Some(report),
        None,
    )
    .await
    .unwrap();
    let (status, _) = poll(&http, &r, host.as_str(), Some(secret), Some("1")).await;
    assert_eq!(status, 204);
    r.shutdown().await.unwrap();
}

/// An admin's release reaches the waiting daemon at once as a reset order, is handed
/// over again until the daemon reports the reset done, and never reaches a classic
/// (credential-less) poll, which would take it for a final rejection.
#[tokio::test]
async fn a_release_wakes_the_vm_with_a_reset_order_until_it_reports_the_reset_done() {
    let (db, client, vms_) = setup(2).await;
    let r = start(&db, &[("LABLINK_LEGACY_VM_AUTH", "true")]).await;
    let http = reqwest::Client::new();
    let waiter = spawn_poll(&http, &r, &vms_[0], "20");
    while r.holder.registry.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    let done = lablink_db::seats::release(&client, &vms_[0].host, true, "admin")
        .await
        .unwrap();
    assert!(
        matches!(done, lablink_db::seats::ActionOutcome::Done { .. }),
        "{done:?}"
    );
    let (status, body, _) = waiter.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let order: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(order["status"], "reset");
    assert_eq!(order["keep_files"], true);
    let id = order["reset"].as_i64().unwrap();
    // Not reported yet: handed over again at once; a classic poll never sees it.
    let host = vms_[0].host.as_str();
    let (status, again) = poll(&http, &r, host, Some(vms_[0].secret.expose()), Some("5")).await;
    assert_eq!((status, &again), (200, &order));
    // (A credential-less poll for this enrolled VM is refused even in legacy mode; the
    // registry's own test shows a classic waiter is never handed a reset.)
    let (status, _) = poll(&http, &r, host, None, Some("1")).await;
    assert_eq!(status, 401);
    // Reported done: the next poll waits, and the VM is free again.
    lablink_db::vms::set_status_after_start_host(
        &client,
        &vms_[0].host,
        lablink_core::domain::VmStatus::Running,
        None,
        None,
        Some(id),
    )
    .await
    .unwrap();
    let (status, _) = poll(&http, &r, host, Some(vms_[0].secret.expose()), Some("1")).await;
    assert_eq!(status, 204);
    assert_eq!(vms::free_seat_count(&client).await.unwrap(), 2);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_waiter_is_woken_by_its_notification_and_only_its_own() {
    let (db, client, vms_) = setup(2).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let waiters: Vec<_> = vms_.iter().map(|v| spawn_poll(&http, &r, v, "20")).collect();
    while r.holder.registry.len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (host, pin, _) = assign(&client, 1).await;
    let assigned_at = Instant::now();
    let mut results = Vec::new();
    for w in waiters {
        results.push(w);
    }
    let i = vms_.iter().position(|v| v.host == host).unwrap();
    let (status, body, at) = results.remove(i).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(pin.as_str()));
    assert!(at.duration_since(assigned_at) < Duration::from_secs(2));
    // The other VM is still waiting.
    assert_eq!(r.holder.registry.len(), 1);
    assert!(delivered(&client, &host).await);
    r.shutdown().await.unwrap();
    let (status, _, _) = results.remove(0).await.unwrap();
    assert_eq!(status, 204, "shutdown answers every waiter");
}

#[tokio::test]
async fn the_newest_waiter_wins_and_an_abandoned_wait_is_freed_at_once() {
    let (db, _client, vms_) = setup(1).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let (host, token) = (vms_[0].host.to_string(), vms_[0].secret.expose().to_owned());
    let first = spawn_poll(&http, &r, &vms_[0], "20");
    while r.holder.registry.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second poll for the same VM supersedes the first, which answers 204 at once.
    let second = spawn_poll(&http, &r, &vms_[0], "20");
    let t = Instant::now();
    assert_eq!(first.await.unwrap().0, 204);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(r.holder.registry.len(), 1);
    second.abort();

    // A raw client that goes away mid-wait: its registration disappears without waiting
    // for the window to end.
    let body = format!(r#"{{"hostname":"{host}"}}"#);
    let mut sock = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    sock.write_all(
        format!(
            "POST /vm_startup?wait=600 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    while r.holder.registry.len() != 1 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sock);
    let t = Instant::now();
    while !r.holder.registry.is_empty() && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.holder.registry.is_empty(), "the abandoned wait was not freed");
    eprintln!("abandoned wait freed in {:?}", t.elapsed());
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn after_losing_its_connection_the_holder_reconnects_and_rechecks_its_waiters() {
    let (db, client, vms_) = setup(1).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let waiter = spawn_poll(&http, &r, &vms_[0], "60");
    while r.holder.registry.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut generation = r.holder.link.subscribe();
    // Cut the connection, and assign before the holder is back: the notification is
    // lost (no one listens), only the re-check can find it.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'lablink-holder'",
            &[],
        )
        .await
        .unwrap();
    let (_, pin, _) = assign(&client, 1).await;
    tokio::time::timeout(Duration::from_secs(15), generation.wait_for(|g| *g >= 2))
        .await
        .expect("the holder reconnects")
        .unwrap();
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(pin.as_str()));
    let health: serde_json::Value = http
        .get(format!("http://{}/healthz", r.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["listener"], "listening");
    assert_eq!(health["connections"], 2);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn several_holders_share_one_database() {
    let (db, client, vms_) = setup(2).await;
    let a = start(&db, &[]).await;
    let b = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let wa = spawn_poll(&http, &a, &vms_[0], "20");
    let wb = spawn_poll(&http, &b, &vms_[1], "20");
    while a.holder.registry.len() + b.holder.registry.len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (h1, p1, _) = assign(&client, 1).await;
    let (h2, p2, _) = assign(&client, 2).await;
    let (ra, rb) = (wa.await.unwrap(), wb.await.unwrap());
    let pin_of = |h: &Hostname| {
        if *h == h1 {
            p1.as_str()
        } else {
            assert_eq!(*h, h2);
            p2.as_str()
        }
    };
    assert_eq!(ra.0, 200);
    assert!(ra.1.contains(pin_of(&vms_[0].host)));
    assert_eq!(rb.0, 200);
    assert!(rb.1.contains(pin_of(&vms_[1].host)));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn legacy_mode_accepts_classic_polls_and_holds_them_for_the_maximum() {
    let (db, client, enrolled) = setup(1).await;
    // A classic VM: a row without a credential (its client cannot present one).
    let classic = Hostname::parse("hold-classic").unwrap();
    vms::create_vms(
        &client,
        &[vms::NewVm {
            hostname: classic.clone(),
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await
    .unwrap();
    let r = start(
        &db,
        &[
            ("LABLINK_LEGACY_VM_AUTH", "true"),
            ("LABLINK_HOLDER_MAX_WAIT_SECONDS", "2"),
            ("LABLINK_HOLDER_DEFAULT_WAIT_SECONDS", "1"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let host = classic.as_str();
    // No ?wait=, no credential: the classic client is held for the maximum window.
    let t = Instant::now();
    let (status, _) = poll(&http, &r, host, None, None).await;
    assert_eq!(status, 204);
    assert!(t.elapsed() >= Duration::from_millis(1900), "{:?}", t.elapsed());
    // A wrong credential is still refused.
    assert_eq!(poll(&http, &r, host, Some("nope"), Some("1")).await.0, 403);
    // An enrolled VM's code and PIN never go to a poll without its credential.
    let enrolled_host = enrolled[0].host.as_str();
    assert_eq!(poll(&http, &r, enrolled_host, None, Some("1")).await.0, 401);
    let (a, pin, _) = assign(&client, 1).await;
    let (b, other_pin, _) = assign(&client, 2).await;
    let (classic_pin, enrolled_pin) = if a == classic {
        (pin, other_pin)
    } else {
        (other_pin, pin)
    };
    assert!(a == classic || b == classic);
    let (status, body) = poll(&http, &r, host, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["pin"], classic_pin.as_str());
    let (status, body) = poll(&http, &r, enrolled_host, None, Some("1")).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.to_string().contains(enrolled_pin.as_str()));
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_answers_every_waiter_promptly() {
    let (db, _client, vms_) = setup(3).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let raw: Vec<_> = vms_.iter().map(|v| spawn_poll(&http, &r, v, "600")).collect();
    while r.holder.registry.len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), r.shutdown())
        .await
        .expect("shutdown is prompt")
        .unwrap();
    for w in raw {
        assert_eq!(w.await.unwrap().0, 204);
    }
    eprintln!("shutdown with 3 waiters took {:?}", t.elapsed());
}

#[tokio::test]
async fn a_connection_that_goes_silent_is_replaced_and_polls_get_503_meanwhile() {
    let (db, client, vms_) = setup(1).await;
    let r = start(&db, &[("LABLINK_HOLDER_HEARTBEAT_SECONDS", "1")]).await;
    let http = reqwest::Client::new();
    let pid: i32 = client
        .query_one(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'lablink-holder'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Only a backend of a server on this host can be frozen (the test's own cluster).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(
        comm.starts_with("postgres"),
        "this test freezes the holder's database backend (SIGSTOP), so it needs a Postgres on \
         this host: backend {pid} is not a local process. Run it without DATABASE_URL (the test \
         starts its own cluster) or through scripts/test"
    );
    // Freeze the holder's backend: its TCP connection stays up but nothing answers,
    // the way a failed-over or NAT-dropped connection behaves.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        stopped.success(),
        "cannot signal the test server's backend {pid} (the test must run on the same host as Postgres)"
    );
    let resume = Resume(pid);
    let mut generation = r.holder.link.subscribe();
    let t = Instant::now();
    let (status, body) = poll(
        &http,
        &r,
        vms_[0].host.as_str(),
        Some(vms_[0].secret.expose()),
        Some("30"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a poll on a silent connection took {:?}",
        t.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(15), generation.wait_for(|g| *g >= 2))
        .await
        .expect("the holder replaces a silent connection")
        .unwrap();
    eprintln!("silent connection replaced after {:?}", t.elapsed());
    // Works again on the new connection.
    let (_, pin, _) = assign(&client, 1).await;
    let (status, body) = poll(
        &http,
        &r,
        vms_[0].host.as_str(),
        Some(vms_[0].secret.expose()),
        Some("5"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["pin"], pin.as_str());
    drop(resume);
    r.shutdown().await.unwrap();
}

/// Resumes (SIGCONT) a stopped backend when dropped, even if the test fails.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// One `POST /vm_export` as the daemon sends it: (status, body).
async fn export_poll(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    vm: &Vm,
    wait: &str,
) -> (u16, String) {
    let resp = http
        .post(format!("http://{addr}/vm_export?wait={wait}"))
        .bearer_auth(vm.secret.expose())
        .json(&lablink_wire::VmPoll {
            hostname: vm.host.to_string(),
        })
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn an_export_opened_while_a_vm_waits_is_handed_to_that_vm_as_its_task() {
    use chrono::SubsecRound;
    use lablink_db::exports;

    let (db, client, vms_) = setup(2).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    assert_eq!(
        export_poll(&http, r.addr, &vms_[0], "1").await.0,
        204,
        "none open yet"
    );

    let waiting = tokio::spawn({
        let (http, addr) = (http.clone(), r.addr);
        let vm = Vm {
            host: vms_[0].host.clone(),
            secret: vms_[0].secret.clone(),
        };
        async move { export_poll(&http, addr, &vm, "20").await }
    });
    let other = tokio::spawn({
        let (http, addr) = (http.clone(), r.addr);
        let vm = Vm {
            host: vms_[1].host.clone(),
            secret: vms_[1].secret.clone(),
        };
        async move { export_poll(&http, addr, &vm, "2").await }
    });
    let job = "20261123T110000Z-0e0e0e01";
    let url = "https://bucket.s3.amazonaws.com/exports/x/vms/hold-0.tar?X-Amz-Signature=s";
    let deadline = chrono::Utc::now().trunc_subsecs(0) + chrono::Duration::hours(1);
    let spec = exports::ExportSpec {
        extensions: vec!["slp".into()],
        max_file_bytes: 1 << 30,
        deadline,
    };
    let target = exports::Target {
        hostname: vms_[0].host.clone(),
        email: Some("p0@example.edu".into()),
    };
    assert!(
        exports::start(
            &client,
            &lablink_core::domain::JobId::parse(job).unwrap(),
            &spec,
            &[(target, url.into())]
        )
        .await
        .unwrap()
    );

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting VM is answered once the export opens")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // The classic keys, no more, and the daemon's type reads them.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["deadline", "extensions", "job_id", "max_file_bytes", "upload_url"]
    );
    let task: lablink_wire::ExportTask = serde_json::from_str(&body).unwrap();
    assert_eq!(
        task,
        lablink_wire::ExportTask {
            job_id: job.into(),
            upload_url: url.into(),
            extensions: vec!["slp".into()],
            max_file_bytes: 1 << 30,
            deadline,
        }
    );
    assert_eq!(
        other.await.unwrap().0,
        204,
        "a VM the export does not ask waits on"
    );
    r.shutdown().await.unwrap();
}

/// Open export `job` for `vms` (each with its own upload URL, `url_of`), one hour ahead.
async fn open_export(
    client: &tokio_postgres::Client,
    job: &str,
    vms: &[&Vm],
    url_of: impl Fn(&Hostname) -> String,
) {
    use lablink_db::exports;
    let spec = exports::ExportSpec {
        extensions: vec!["slp".into()],
        max_file_bytes: 1 << 30,
        deadline: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    let targets: Vec<_> = vms
        .iter()
        .map(|v| {
            (
                exports::Target {
                    hostname: v.host.clone(),
                    email: None,
                },
                url_of(&v.host),
            )
        })
        .collect();
    let job = lablink_core::domain::JobId::parse(job).unwrap();
    assert!(exports::start(client, &job, &spec, &targets).await.unwrap());
}

/// `POST /vm_export` in the background: (status, body, when it was answered).
fn spawn_export_poll(
    http: &reqwest::Client,
    r: &Running,
    vm: &Vm,
    wait: &str,
) -> tokio::task::JoinHandle<(u16, String, Instant)> {
    let (http, addr, wait) = (http.clone(), r.addr, wait.to_owned());
    let vm = Vm {
        host: vm.host.clone(),
        secret: vm.secret.clone(),
    };
    tokio::spawn(async move {
        let (status, body) = export_poll(&http, addr, &vm, &wait).await;
        (status, body, Instant::now())
    })
}

async fn export_waiters_reach(r: &Running, n: usize) {
    let t = Instant::now();
    while r.holder.exports.waiters() < n {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} export waiters of {n}",
            r.holder.exports.waiters()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_export_opened_while_sixty_vms_wait_reaches_each_with_its_own_url_from_one_load() {
    use lablink_db::exports;

    let (db, client, vms_) = setup(70).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let (asked, others) = vms_.split_at(60);
    let url_of =
        |h: &Hostname| format!("https://bucket.s3.amazonaws.com/exports/j/vms/{h}.tar?X-Amz-Signature={h}");
    let waiting: Vec<_> = asked
        .iter()
        .map(|v| spawn_export_poll(&http, &r, v, "20"))
        .collect();
    let window = Instant::now();
    let not_asked: Vec<_> = others
        .iter()
        .map(|v| spawn_export_poll(&http, &r, v, "4"))
        .collect();
    export_waiters_reach(&r, 70).await;
    let before = r.holder.link.queries();

    let job = "20261201T090000Z-0a0b0c0d";
    let opened = Instant::now();
    open_export(&client, job, &asked.iter().collect::<Vec<_>>(), url_of).await;
    for (vm, w) in asked.iter().zip(waiting) {
        let (status, body, at) = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("every waiting VM of the export is answered")
            .unwrap();
        assert_eq!(status, 200, "{}: {body}", vm.host);
        let task: lablink_wire::ExportTask = serde_json::from_str(&body).unwrap();
        assert_eq!(task.job_id, job);
        assert_eq!(task.upload_url, url_of(&vm.host), "its own URL");
        assert!(at.duration_since(opened) < Duration::from_secs(5));
    }
    // One load of the export for all sixty (a heartbeat may fall in between); it was a
    // look-up per waiter before.
    let spent = r.holder.link.queries() - before;
    eprintln!("queries while 60 export waiters were answered: {spent}");
    assert!(spent <= 3, "{spent} queries for one export opening");
    for w in not_asked {
        let (status, body, at) = w.await.unwrap();
        assert_eq!(status, 204, "a VM the export does not ask waits on: {body}");
        assert!(
            at.duration_since(window) >= Duration::from_millis(3900),
            "answered at the window's end"
        );
    }

    // A VM still uploading keeps its task; one that answered for good is not handed it
    // again (its notification strikes it from the holder's memory).
    let job_id = lablink_core::domain::JobId::parse(job).unwrap();
    let (up, done) = (&asked[0], &asked[1]);
    exports::report(&client, &job_id, &up.host, &exports::Report::Uploading)
        .await
        .unwrap()
        .unwrap();
    exports::report(
        &client,
        &job_id,
        &done.host,
        &exports::Report::NoFiles { skipped: 0 },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(export_poll(&http, r.addr, up, "1").await.0, 200);
    assert_eq!(export_poll(&http, r.addr, done, "1").await.0, 204);
    // Closed: nobody is handed it any more.
    exports::close(&client, &job_id).await.unwrap();
    let t = Instant::now();
    while export_poll(&http, r.addr, &asked[2], "0").await.0 == 200 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the closed export is still handed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_export_opened_while_the_listening_connection_was_down_is_handed_over_after_reconnect() {
    let (db, client, vms_) = setup(1).await;
    let r = start(&db, &[]).await;
    let http = reqwest::Client::new();
    let waiter = spawn_export_poll(&http, &r, &vms_[0], "60");
    export_waiters_reach(&r, 1).await;
    let mut generation = r.holder.link.subscribe();
    // Keep the holder out while the export opens, so its notification reaches no one:
    // only the load after the reconnect can find it. (A database's own sessions cannot
    // close it to connections: done from the server's `postgres` database.)
    let admin = lablink_db::DbConfig::from_url(&lablink_testkit::with_dbname(&db.url, "postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let name = &db.name;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    let gone = "SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'lablink-holder'";
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'lablink-holder'",
            &[],
        )
        .await
        .unwrap();
    let t = Instant::now();
    while client.query_one(gone, &[]).await.unwrap().get::<_, i64>(0) > 0 || r.holder.link.is_up().await {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the holder's backend did not go"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = "https://bucket.s3.amazonaws.com/exports/j/vms/hold-0.tar?X-Amz-Signature=gap";
    open_export(&client, "20261201T100000Z-0a0b0c0e", &[&vms_[0]], |_| url.into()).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), generation.wait_for(|g| *g >= 2))
        .await
        .expect("the holder reconnects")
        .unwrap();
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered after the reconnect")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let task: lablink_wire::ExportTask = serde_json::from_str(&body).unwrap();
    assert_eq!(task.upload_url, url);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn setup_db_prepares_an_empty_database_twice_over_and_the_holder_then_runs_as_lablink_app() {
    use lablink_db::roles::{APP, PUBLIC};
    let db = TestDb::empty().await;
    // As the task's db-setup container runs it: the master user, before the holder.
    let setup_db = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lablink-holder"))
            .arg("setup-db")
            .env(
                "DATABASE_URL",
                lablink_testkit::with_user(&db.url, lablink_testkit::MASTER),
            )
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap()
    };
    for run in 0..2 {
        let out = setup_db();
        assert!(
            out.status.success(),
            "setup-db run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let typo = std::process::Command::new(env!("CARGO_BIN_EXE_lablink-holder"))
        .arg("setup-bd")
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(2));

    let app = db.config_as(APP).connect().await.unwrap();
    let vm = Vm {
        host: Hostname::parse("hold-0").unwrap(),
        secret: Secret::generate(),
    };
    vms::create_vms(
        &app,
        &[vms::NewVm {
            hostname: vm.host.clone(),
            instance_id: None,
            credential_hash: Some(vm.secret.hash()),
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await
    .unwrap();
    let app_url = lablink_testkit::with_user(&db.url, APP);
    let r = start(&db, &[("DATABASE_URL", app_url.as_str())]).await;
    let http = reqwest::Client::new();
    let waiter = spawn_poll(&http, &r, &vm, "20");
    while r.holder.registry.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A participant route's assignment (lablink_public) wakes the holder (lablink_app).
    let public = db.config_as(PUBLIC).connect().await.unwrap();
    let (host, pin, _) = assign(&public, 1).await;
    let (status, body, _) = waiter.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(pin.as_str()));
    assert!(delivered(&app, &host).await);
    r.shutdown().await.unwrap();
}
