//! The queries against a real Postgres (a fresh database per test; see lablink-testkit).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use lablink_core::credential::Secret;
use lablink_core::domain::{CrdCommand, Email, GpuHealth, Hostname, Phase, Pin, StartupTimings, VmStatus};
use lablink_db::{Db, logs, vms};
use lablink_testkit::TestDb;

fn host(s: &str) -> Hostname {
    Hostname::parse(s).unwrap()
}

fn email(i: usize) -> Email {
    Email::parse(&format!("participant{i}@uni.edu")).unwrap()
}

fn command(i: usize) -> CrdCommand {
    CrdCommand::from_code(&format!("4/0Acode{i}")).unwrap()
}

async fn running_vms(client: &tokio_postgres::Client, n: usize) -> Vec<Hostname> {
    let new: Vec<vms::NewVm> = (0..n)
        .map(|i| vms::NewVm {
            hostname: host(&format!("vm-{i:04}")),
            instance_id: Some(format!("i-{i:08x}")),
            credential_hash: Some(Secret::generate().hash()),
            status: VmStatus::Running,
            provision: None,
        })
        .collect();
    assert_eq!(vms::create_vms(client, &new).await.unwrap(), n as u64);
    new.into_iter().map(|v| v.hostname).collect()
}

/// `n` connections, so concurrent statements really run in different sessions.
async fn clients(db: &TestDb, n: usize) -> Vec<Arc<tokio_postgres::Client>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Arc::new(db.client().await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_requests_for_100_vms_give_exactly_100_distinct_assignments() {
    let db = TestDb::new().await;
    let setup = db.client().await;
    running_vms(&setup, 100).await;
    let pool = clients(&db, 40).await;

    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let c = pool[i % pool.len()].clone();
            tokio::spawn(async move { vms::assign(&c, &email(i), &command(i), &Pin::generate()).await })
        })
        .collect();
    let mut assigned = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Some(a) => {
                assert!(a.fresh);
                assigned.push(a.hostname);
            }
            None => refused += 1,
        }
    }
    let distinct: HashSet<_> = assigned.iter().cloned().collect();
    assert_eq!(assigned.len(), 100);
    assert_eq!(distinct.len(), 100, "no VM was handed out twice");
    assert_eq!(refused, 900);
    assert_eq!(vms::free_seat_count(&setup).await.unwrap(), 0);
    let holders: i64 = setup
        .query_one(
            "SELECT count(DISTINCT user_email) FROM vms WHERE user_email IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        holders, 100,
        "every stored assignment belongs to a different email"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_pairs_with_the_same_email_get_fifty_vms_each_pair_the_same() {
    let db = TestDb::new().await;
    let setup = db.client().await;
    running_vms(&setup, 100).await;
    let pool = clients(&db, 20).await;

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let c = pool[i % pool.len()].clone();
            let who = i / 2;
            tokio::spawn(async move {
                (
                    who,
                    vms::assign(&c, &email(who), &command(i), &Pin::generate()).await,
                )
            })
        })
        .collect();
    let mut by_email: HashMap<usize, Vec<vms::Assignment>> = HashMap::new();
    for t in tasks {
        let (who, r) = t.await.unwrap();
        by_email
            .entry(who)
            .or_default()
            .push(r.unwrap().expect("there are enough VMs"));
    }
    assert_eq!(by_email.len(), 50);
    let mut hosts = HashSet::new();
    for (who, pair) in &by_email {
        assert_eq!(pair.len(), 2);
        assert_eq!(pair[0].hostname, pair[1].hostname, "email {who} got two VMs");
        assert_eq!(
            pair[0].pin, pair[1].pin,
            "the second request sees the first one's PIN"
        );
        assert_eq!(pair.iter().filter(|a| a.fresh).count(), 1);
        hosts.insert(pair[0].hostname.clone());
    }
    assert_eq!(hosts.len(), 50);
    assert_eq!(vms::free_seat_count(&setup).await.unwrap(), 50);
}

#[tokio::test]
async fn same_email_twice_gets_the_same_vm_and_no_free_vm_is_a_clean_none() {
    let db = TestDb::new().await;
    let c = db.client().await;
    running_vms(&c, 1).await;
    let first = vms::assign(&c, &email(1), &command(1), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    let again = vms::assign(&c, &email(1), &command(2), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.hostname.clone(), first.pin.clone(), again.fresh),
        (again.hostname, again.pin, false)
    );
    assert_eq!(
        vms::assign(&c, &email(2), &command(3), &Pin::generate())
            .await
            .unwrap(),
        None
    );
    // The stored command is the normalized safe form.
    let stored: String = c
        .query_one("SELECT crd_command FROM vms", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, command(1).normalized());
}

#[tokio::test]
async fn a_listener_gets_the_three_key_payload_for_every_assignment() {
    use futures_util::StreamExt;
    let db = TestDb::new().await;
    let c = db.client().await;
    running_vms(&c, 5).await;

    let (listener, mut conn) = db.config.connect_raw().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN vm_updates").await.unwrap();

    let mut expected = HashMap::new();
    for i in 0..5 {
        let pin = Pin::generate();
        let a = vms::assign(&c, &email(i), &command(i), &pin)
            .await
            .unwrap()
            .unwrap();
        expected.insert(a.hostname.to_string(), (command(i).normalized(), pin.to_string()));
    }
    for _ in 0..5 {
        let (channel, payload) = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a notification per assignment")
            .unwrap();
        assert_eq!(channel, "vm_updates");
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let obj = v.as_object().unwrap();
        let keys: HashSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, HashSet::from(["HostName", "CrdCommand", "Pin"]));
        let (cmd, pin) = expected
            .remove(obj["HostName"].as_str().unwrap())
            .expect("one per host");
        assert_eq!(obj["CrdCommand"], cmd.as_str());
        assert_eq!(obj["Pin"], pin.as_str());
    }
    assert!(expected.is_empty());
    // Status changes and clearing do not notify.
    vms::set_status(&c, &host("vm-0000"), VmStatus::Error, Some("x"))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn log_lines_appended_twice_with_the_same_event_ids_are_stored_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 2).await;
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
    let batch: Vec<logs::LogLine> = (0..50)
        .map(|i| logs::LogLine {
            event_id: format!("ev-{i}"),
            logged_at: t0 + chrono::Duration::seconds(i),
            message: format!("line {i}"),
        })
        .collect();
    assert_eq!(logs::append(&c, &hosts[0], &batch).await.unwrap(), Some(50));
    assert_eq!(logs::append(&c, &hosts[0], &batch).await.unwrap(), Some(0));
    // The same event id on another VM is another line; a duplicate within a batch is dropped.
    let mut dup = batch[..2].to_vec();
    dup.push(batch[0].clone());
    assert_eq!(logs::append(&c, &hosts[1], &dup).await.unwrap(), Some(2));
    // A NUL byte (which Postgres text cannot hold) is replaced, not a failure.
    let nul = [logs::LogLine {
        event_id: "nul\0id".into(),
        logged_at: t0,
        message: "bin\0ary".into(),
    }];
    assert_eq!(logs::append(&c, &hosts[1], &nul).await.unwrap(), Some(1));
    assert!(
        vms::set_status(&c, &hosts[1], VmStatus::Error, Some("bad\0reason"))
            .await
            .unwrap()
    );
    c.execute("DELETE FROM vm_log_lines WHERE message LIKE 'bin%ary'", &[])
        .await
        .unwrap();
    // An unknown VM stores nothing.
    assert_eq!(logs::append(&c, &host("nope"), &batch).await.unwrap(), None);

    let first = logs::read_after(&c, &hosts[0], 0, 20).await.unwrap();
    assert_eq!(first.len(), 20);
    assert_eq!(first[0].message, "line 0");
    let rest = logs::read_after(&c, &hosts[0], first.last().unwrap().cursor, 1000)
        .await
        .unwrap();
    assert_eq!(rest.len(), 30);
    assert_eq!(rest.last().unwrap().message, "line 49");
    assert!(logs::has_lines(&c, &hosts[1]).await.unwrap());
    let total: i64 = c
        .query_one("SELECT count(*) FROM vm_log_lines", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 52);
}

#[tokio::test]
async fn free_seats_count_only_running_unassigned_and_not_unhealthy_vms() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 5).await;
    vms::set_status(&c, &hosts[0], VmStatus::Initializing, None)
        .await
        .unwrap();
    vms::set_gpu_health(&c, &hosts[1], GpuHealth::Unhealthy)
        .await
        .unwrap();
    vms::set_gpu_health(&c, &hosts[2], GpuHealth::NotAvailable)
        .await
        .unwrap();
    vms::assign(&c, &email(1), &command(1), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(vms::free_seat_count(&c).await.unwrap(), 2);
    // An unhealthy or initializing VM is never assigned.
    vms::assign(&c, &email(2), &command(2), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    vms::assign(&c, &email(3), &command(3), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        vms::assign(&c, &email(4), &command(4), &Pin::generate())
            .await
            .unwrap(),
        None
    );
    let got: HashSet<String> = c
        .query("SELECT hostname FROM vms WHERE user_email IS NOT NULL", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!got.contains(hosts[0].as_str()) && !got.contains(hosts[1].as_str()));
}

#[tokio::test]
async fn status_in_use_and_gpu_health_are_set_and_unknown_vms_are_reported() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 2).await;
    let ghost = host("ghost");
    assert!(
        vms::set_status(&c, &hosts[0], VmStatus::Error, Some("start-host failed"))
            .await
            .unwrap()
    );
    assert!(
        !vms::set_status(&c, &ghost, VmStatus::Running, None)
            .await
            .unwrap()
    );
    assert!(vms::set_in_use(&c, &hosts[0], true).await.unwrap());
    assert!(!vms::set_in_use(&c, &ghost, true).await.unwrap());
    assert!(
        vms::set_gpu_health(&c, &hosts[0], GpuHealth::NotAvailable)
            .await
            .unwrap()
    );
    assert!(!vms::set_gpu_health(&c, &ghost, GpuHealth::Healthy).await.unwrap());
    assert_eq!(
        vms::get_status(&c, &hosts[0]).await.unwrap(),
        Some(VmStatus::Error)
    );
    assert_eq!(vms::get_status(&c, &ghost).await.unwrap(), None);
    let vm = vms::get_vm(&c, &hosts[0]).await.unwrap().unwrap();
    assert_eq!(
        (vm.in_use, vm.healthy.as_deref(), vm.status_reason.as_deref()),
        (true, Some("N/A"), Some("start-host failed"))
    );
    assert!(vms::get_vm(&c, &ghost).await.unwrap().is_none());
    let all = vms::list_statuses(&c).await.unwrap();
    assert_eq!(
        all,
        vec![
            (hosts[0].clone(), VmStatus::Error),
            (hosts[1].clone(), VmStatus::Running)
        ]
    );
    assert_eq!(vms::list_vms(&c).await.unwrap().len(), 2);
}

#[tokio::test]
async fn timings_are_recorded_and_total_startup_spans_provisioning_to_the_last_end() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let t = |m: i64| Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap() + chrono::Duration::minutes(m);
    let h = host("vm-timed");
    vms::create_vms(
        &c,
        &[vms::NewVm {
            hostname: h.clone(),
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Initializing,
            provision: Some(Phase::new("provisioning", t(0), t(1)).unwrap()),
        }],
    )
    .await
    .unwrap();
    let cloud_init = StartupTimings {
        cloud_init: Some(Phase::new("cloud-init", t(2), t(8)).unwrap()),
        ..StartupTimings::default()
    };
    assert_eq!(
        vms::record_timings(&c, &h, &cloud_init).await.unwrap(),
        Some(480.0)
    );
    let container = StartupTimings {
        container: Some(Phase::new("container", t(5), t(10)).unwrap()),
        ..StartupTimings::default()
    };
    assert_eq!(
        vms::record_timings(&c, &h, &container).await.unwrap(),
        Some(600.0)
    );
    // The workspace's phases: the startup script ends last, so the span grows to it.
    let workspace = StartupTimings {
        image_pull: Some(Phase::new("image pull", t(3), t(5)).unwrap()),
        tutorial_clone: Some(Phase::new("tutorial clone", t(10), t(11)).unwrap()),
        startup_script: Some(Phase::new("startup script", t(11), t(13)).unwrap()),
        ..StartupTimings::default()
    };
    assert_eq!(
        vms::record_timings(&c, &h, &workspace).await.unwrap(),
        Some(780.0)
    );
    let vm = vms::get_vm(&c, &h).await.unwrap().unwrap();
    assert_eq!(vm.cloud_init.unwrap().seconds(), 360.0);
    assert_eq!(vm.container.unwrap().seconds(), 300.0);
    assert_eq!(vm.provision.unwrap().seconds(), 60.0);
    assert_eq!(vm.image_pull.unwrap().seconds(), 120.0);
    assert_eq!(vm.tutorial_clone.unwrap().seconds(), 60.0);
    assert_eq!(vm.startup_script.unwrap().seconds(), 120.0);
    assert_eq!(
        vms::record_timings(&c, &host("ghost"), &container).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn vms_initializing_past_the_bootstrap_deadline_are_marked_error_and_counted_for_the_alarms() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 3).await;
    for h in &hosts {
        vms::set_status(&c, h, VmStatus::Initializing, None)
            .await
            .unwrap();
    }
    // Launched 30 minutes ago and never heard from; launched 30 minutes ago and still
    // preparing its workspace (it reported `initializing`); launched just now.
    c.execute(
        "UPDATE vms SET created_at = now() - interval '30 minutes' WHERE hostname = ANY($1)",
        &[&vec![hosts[0].as_str(), hosts[1].as_str()]],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE vms SET last_seen_at = NULL WHERE hostname = ANY($1)",
        &[&vec![hosts[0].as_str(), hosts[2].as_str()]],
    )
    .await
    .unwrap();
    let deadline = std::time::Duration::from_secs(20 * 60);
    let marked = vms::expire_bootstraps(&c, deadline).await.unwrap();
    assert_eq!(marked, vec![hosts[0].clone()]);
    let vm = vms::get_vm(&c, &hosts[0]).await.unwrap().unwrap();
    assert_eq!(vm.status, VmStatus::Error);
    assert_eq!(
        vm.status_reason.as_deref(),
        Some(
            "bootstrap did not finish within 20 minutes: the VM never reported; see its EC2 console output (cloud-init's lablink-bootstrap lines)"
        )
    );
    assert_eq!(
        vms::get_status(&c, &hosts[1]).await.unwrap(),
        Some(VmStatus::Initializing),
        "a VM that reports is left to report its own outcome"
    );
    assert_eq!(
        vms::get_status(&c, &hosts[2]).await.unwrap(),
        Some(VmStatus::Initializing)
    );
    assert!(
        vms::expire_bootstraps(&c, deadline).await.unwrap().is_empty(),
        "once"
    );
    // What the holder logs for the alarms: the expired one is in error; the one that
    // reports but is still initializing past the deadline is overdue; the new one is not.
    assert_eq!(
        vms::stuck_counts(&c, deadline).await.unwrap(),
        vms::StuckVms {
            error: 1,
            initializing_overdue: 1
        }
    );
}

#[tokio::test]
async fn a_start_host_outcome_is_kept_until_the_next_one() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 1).await;
    let h = &hosts[0];
    assert_eq!(vms::get_vm(&c, h).await.unwrap().unwrap().start_host, None);
    let failed = vms::StartHostReport {
        ok: false,
        exit_code: Some(1),
        output: "OAuth error: the code was refused",
        assignment: None,
    };
    assert!(
        vms::set_status_after_start_host(
            &c,
            h,
            VmStatus::Error,
            Some("start-host failed"),
            Some(failed),
            None
        )
        .await
        .unwrap()
    );
    let run = vms::get_vm(&c, h).await.unwrap().unwrap().start_host.unwrap();
    assert_eq!((run.ok, run.exit_code), (false, Some(1)));
    assert_eq!(run.output, "OAuth error: the code was refused");
    // A plain status report leaves the outcome as it was.
    vms::set_status(&c, h, VmStatus::Running, None).await.unwrap();
    let vm = vms::get_vm(&c, h).await.unwrap().unwrap();
    assert_eq!(vm.start_host.as_ref().map(|r| r.ok), Some(false));
    assert_eq!(vm.status_reason, None);
    // The next run replaces it; a run killed at the timeout has no exit code.
    let killed = vms::StartHostReport {
        ok: false,
        exit_code: None,
        output: &"x".repeat(5000),
        assignment: None,
    };
    vms::set_status_after_start_host(&c, h, VmStatus::Error, Some("timeout"), Some(killed), None)
        .await
        .unwrap();
    let run = vms::get_vm(&c, h).await.unwrap().unwrap().start_host.unwrap();
    assert_eq!(run.exit_code, None);
    assert_eq!(
        run.output.len(),
        2000,
        "the output is clipped to the column's limit"
    );
}

fn assignment(p: Option<vms::Pending>) -> Option<vms::PendingAssignment> {
    match p {
        Some(vms::Pending::Assignment(a)) => Some(a),
        Some(other) => panic!("expected an assignment, got {other:?}"),
        None => None,
    }
}

fn outcome<'a>(ok: bool, key: Option<&'a str>) -> vms::StartHostReport<'a> {
    vms::StartHostReport {
        ok,
        exit_code: Some(if ok { 0 } else { 1 }),
        output: "",
        assignment: key,
    }
}

#[tokio::test]
async fn an_assignment_stays_pending_for_an_acknowledging_poll_until_its_outcome_names_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 1).await;
    let h = &hosts[0];
    assert_eq!(vms::pending_for(&c, h, true).await.unwrap(), None);
    let pin = Pin::generate();
    vms::assign(&c, &email(1), &command(1), &pin)
        .await
        .unwrap()
        .unwrap();
    let pending = assignment(vms::pending_for(&c, h, true).await.unwrap()).unwrap();
    assert_eq!(
        (pending.command.as_str(), &pending.pin),
        (command(1).normalized().as_str(), &pin)
    );
    let (hash, looked_up) = vms::startup_lookup(&c, h, true).await.unwrap().unwrap();
    assert!(hash.is_some());
    assert_eq!(assignment(looked_up).as_ref(), Some(&pending));
    assert_eq!(
        vms::pending_for_many(&c, &[(h.clone(), true), (host("ghost"), true)])
            .await
            .unwrap(),
        vec![(h.clone(), vms::Pending::Assignment(pending.clone()))]
    );
    // Another PIN (a newer assignment) is not marked by an older delivery.
    let other = Pin::parse(if pin.as_str() == "000000" {
        "111111"
    } else {
        "000000"
    })
    .unwrap();
    assert!(
        !vms::mark_delivered(&c, h, &other, &pending.command)
            .await
            .unwrap()
    );
    assert!(vms::mark_delivered(&c, h, &pin, &pending.command).await.unwrap());
    assert!(!vms::mark_delivered(&c, h, &pin, &pending.command).await.unwrap());
    // Delivered: done for a classic poll; an acknowledging one gets it again.
    assert_eq!(vms::pending_for(&c, h, false).await.unwrap(), None);
    assert!(vms::pending_for(&c, h, true).await.unwrap().is_some());
    assert!(
        vms::pending_for_many(&c, &[(h.clone(), false)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        vms::pending_for_many(&c, &[(h.clone(), true)])
            .await
            .unwrap()
            .len(),
        1
    );

    // An outcome naming another assignment (an older code) settles nothing and is not
    // recorded as this one's.
    let stale = lablink_wire::assignment_key(h.as_str(), pin.as_str(), "an older command");
    vms::set_status_after_start_host(
        &c,
        h,
        VmStatus::Error,
        Some("x"),
        Some(outcome(false, Some(&stale))),
        None,
    )
    .await
    .unwrap();
    assert!(vms::pending_for(&c, h, true).await.unwrap().is_some());
    assert_eq!(vms::get_vm(&c, h).await.unwrap().unwrap().start_host, None);
    // The outcome naming it (the key computed in SQL equals the wire's) acknowledges it.
    let key = lablink_wire::assignment_key(h.as_str(), pin.as_str(), &pending.command);
    vms::set_status_after_start_host(
        &c,
        h,
        VmStatus::Running,
        None,
        Some(outcome(true, Some(&key))),
        None,
    )
    .await
    .unwrap();
    assert_eq!(vms::pending_for(&c, h, true).await.unwrap(), None);
    let vm = vms::get_vm(&c, h).await.unwrap().unwrap();
    assert!(vm.acknowledged_at.is_some() && vm.start_host.unwrap().ok);
    assert_eq!(vms::startup_lookup(&c, &host("ghost"), true).await.unwrap(), None);
}

#[tokio::test]
async fn a_fresh_code_replaces_the_stored_one_within_the_seat_limits() {
    use lablink_db::seats::{self, CodeChange, CodeLimits, Proof};
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 2).await;
    let first = vms::assign(&c, &email(1), &command(1), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    let h = &first.hostname;
    let key = |pin: &Pin, cmd: &CrdCommand| {
        lablink_wire::assignment_key(h.as_str(), pin.as_str(), &cmd.normalized())
    };
    // The same email with a new code: the assign statement finds the seat, not its code.
    let again = vms::assign(&c, &email(1), &command(2), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert!(!again.fresh && !again.same_command && &again.hostname == h);
    let limits = CodeLimits {
        min_interval: std::time::Duration::from_secs(20),
        max_changes: 3,
    };
    // Just assigned, its outcome not known yet: too soon.
    let e = email(1);
    let r = seats::send_code(
        &c,
        h,
        e.as_str(),
        &command(2),
        &Pin::generate(),
        limits,
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert!(
        matches!(r, CodeChange::TooSoon { wait_seconds } if (1..=20).contains(&wait_seconds)),
        "{r:?}"
    );
    // Refused: the participant, waiting with a new code, may send it at once.
    vms::set_status_after_start_host(
        &c,
        h,
        VmStatus::Error,
        None,
        Some(outcome(false, Some(&key(&first.pin, &command(1))))),
        None,
    )
    .await
    .unwrap();
    assert_eq!(vms::pending_for(&c, h, true).await.unwrap(), None);
    let new_pin = Pin::generate();
    let r = seats::send_code(&c, h, e.as_str(), &command(2), &new_pin, limits, Proof::SeatToken)
        .await
        .unwrap();
    assert_eq!(r, CodeChange::Sent { pin: new_pin.clone() });
    let quick = CodeLimits {
        min_interval: std::time::Duration::ZERO,
        ..limits
    };
    // Pending again, with the new code and PIN; the old outcome no longer counts.
    let p = assignment(vms::pending_for(&c, h, true).await.unwrap()).unwrap();
    assert_eq!((p.command, p.pin), (command(2).normalized(), new_pin.clone()));
    let r = seats::send_code(
        &c,
        h,
        e.as_str(),
        &command(2),
        &Pin::generate(),
        quick,
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert_eq!(r, CodeChange::Unchanged { pin: new_pin });
    // Another email cannot send codes to this seat.
    let r = seats::send_code(
        &c,
        h,
        email(9).as_str(),
        &command(9),
        &Pin::generate(),
        quick,
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert_eq!(r, CodeChange::NotYours);
    for i in 3..5 {
        let r = seats::send_code(
            &c,
            h,
            e.as_str(),
            &command(i),
            &Pin::generate(),
            quick,
            Proof::SeatToken,
        )
        .await
        .unwrap();
        assert!(matches!(r, CodeChange::Sent { .. }), "{i}: {r:?}");
    }
    let before = vms::get_vm(&c, h).await.unwrap().unwrap();
    let r = seats::send_code(
        &c,
        h,
        e.as_str(),
        &command(7),
        &Pin::generate(),
        quick,
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert_eq!(r, CodeChange::TooMany { max: 3 });
    let after = vms::get_vm(&c, h).await.unwrap().unwrap();
    assert_eq!(
        (before.code_changes, before.assigned_at),
        (after.code_changes, after.assigned_at)
    );
    assert_eq!(after.code_changes, 3);
    // The other VM was never touched.
    let other = hosts.iter().find(|x| *x != h).unwrap();
    assert_eq!(vms::get_vm(&c, other).await.unwrap().unwrap().user_email, None);
}

#[tokio::test]
async fn a_seat_token_shows_its_own_seat_through_its_life() {
    use lablink_db::seats::{self, ActionOutcome, CodeLimits, Proof, SeatState};
    let db = TestDb::new().await;
    let c = db.client().await;
    running_vms(&c, 2).await;
    let limits = CodeLimits::default();
    let a = vms::assign(&c, &email(1), &command(1), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    let b = vms::assign(&c, &email(2), &command(2), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    let ta = seats::issue_token(&c, &a.hostname, &email(1)).await.unwrap();
    let tb = seats::issue_token(&c, &b.hostname, &email(2)).await.unwrap();
    assert_ne!(ta.expose(), tb.expose());
    assert_eq!(seats::view(&c, &"0".repeat(64), limits).await.unwrap(), None);
    let v = seats::view(&c, ta.expose(), limits).await.unwrap().unwrap();
    assert_eq!(
        (v.state, v.hostname.as_str()),
        (SeatState::Connecting, a.hostname.as_str())
    );
    assert_eq!(v.pin.as_deref(), Some(a.pin.as_str()));
    assert_eq!(v.email.as_deref(), Some(email(1).as_str()));
    // Only the hash is stored.
    let stored: i64 = c
        .query_one(
            "SELECT count(*) FROM seat_tokens WHERE token_hash = convert_to($1, 'UTF8')",
            &[&ta.expose()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    let key = lablink_wire::assignment_key(a.hostname.as_str(), a.pin.as_str(), &command(1).normalized());
    vms::set_status_after_start_host(
        &c,
        &a.hostname,
        VmStatus::Error,
        None,
        Some(outcome(false, Some(&key))),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        seats::view(&c, ta.expose(), limits).await.unwrap().unwrap().state,
        SeatState::Refused
    );
    vms::set_status_after_start_host(
        &c,
        &a.hostname,
        VmStatus::Running,
        None,
        Some(outcome(true, Some(&key))),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        seats::view(&c, ta.expose(), limits).await.unwrap().unwrap().state,
        SeatState::Ready
    );
    // Connected: the email alone may not move the desktop to another Google account
    // (anyone may know an email); the seat's token may.
    let by_email = seats::send_code(
        &c,
        &a.hostname,
        email(1).as_str(),
        &command(5),
        &Pin::generate(),
        limits,
        Proof::Email,
    )
    .await
    .unwrap();
    assert_eq!(by_email, seats::CodeChange::Connected);
    assert_eq!(vms::pending_for(&c, &a.hostname, true).await.unwrap(), None);
    c.execute(
        "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    let by_token = seats::send_code(
        &c,
        &a.hostname,
        email(1).as_str(),
        &command(5),
        &Pin::generate(),
        limits,
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert!(matches!(by_token, seats::CodeChange::Sent { .. }), "{by_token:?}");
    // B's token never shows A's seat.
    let vb = seats::view(&c, tb.expose(), limits).await.unwrap().unwrap();
    assert_eq!(
        (vb.hostname.as_str(), vb.state),
        (b.hostname.as_str(), SeatState::Connecting)
    );

    // Reassign A's seat to a new email: A's page says so and shows no PIN; B's email
    // cannot take it (B holds a seat).
    let refused = seats::reassign(&c, &a.hostname, &email(2), "admin")
        .await
        .unwrap();
    assert!(matches!(refused, ActionOutcome::Refused(m) if m.contains("already holds")));
    let moved = seats::reassign(&c, &a.hostname, &email(3), "admin")
        .await
        .unwrap();
    assert_eq!(
        moved,
        ActionOutcome::Done {
            previous_email: Some(email(1).as_str().into())
        }
    );
    let v = seats::view(&c, ta.expose(), limits).await.unwrap().unwrap();
    assert_eq!((v.state, v.pin), (SeatState::Reassigned, None));
    assert_eq!(v.email, None);
    // The old code and PIN went with the old participant: nothing is handed to the VM
    // until the new one's code.
    let moved_vm = vms::get_vm(&c, &a.hostname).await.unwrap().unwrap();
    assert_eq!(moved_vm.user_email.as_deref(), Some(email(3).as_str()));
    assert_eq!(moved_vm.assigned_at, None);
    assert_eq!(vms::pending_for(&c, &a.hostname, true).await.unwrap(), None);
    // The new participant's code goes to that VM (its limits start again).
    let again = vms::assign(&c, &email(3), &command(3), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert!(!again.fresh && again.hostname == a.hostname && !again.same_command);
    let sent = seats::send_code(
        &c,
        &a.hostname,
        email(3).as_str(),
        &command(3),
        &Pin::generate(),
        limits,
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert!(matches!(sent, seats::CodeChange::Sent { .. }), "{sent:?}");
    let p = assignment(vms::pending_for(&c, &a.hostname, true).await.unwrap()).unwrap();
    assert_eq!(p.command, command(3).normalized());

    // Release B's VM: the page says released, the VM is out of the pool until its
    // daemon reports the reset done, and a classic poll is never told to reset.
    assert_eq!(vms::free_seat_count(&c).await.unwrap(), 0);
    let done = seats::release(&c, &b.hostname, true, "admin").await.unwrap();
    assert_eq!(
        done,
        ActionOutcome::Done {
            previous_email: Some(email(2).as_str().into())
        }
    );
    assert_eq!(
        seats::view(&c, tb.expose(), limits).await.unwrap().unwrap().state,
        SeatState::Released
    );
    assert_eq!(vms::free_seat_count(&c).await.unwrap(), 0);
    let reset = vms::pending_for(&c, &b.hostname, true).await.unwrap();
    let Some(vms::Pending::Reset { id, keep_files: true }) = reset else {
        panic!("{reset:?}")
    };
    assert_eq!(vms::pending_for(&c, &b.hostname, false).await.unwrap(), None);
    assert!(
        vms::assign(&c, &email(4), &command(4), &Pin::generate())
            .await
            .unwrap()
            .is_none()
    );
    // A report naming another reset changes nothing; the right one frees the VM.
    vms::set_status_after_start_host(&c, &b.hostname, VmStatus::Running, None, None, Some(id + 1))
        .await
        .unwrap();
    assert_eq!(vms::free_seat_count(&c).await.unwrap(), 0);
    vms::set_status_after_start_host(&c, &b.hostname, VmStatus::Running, None, None, Some(id))
        .await
        .unwrap();
    assert_eq!(vms::free_seat_count(&c).await.unwrap(), 1);
    let next = vms::assign(&c, &email(4), &command(4), &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.hostname, b.hostname);
    // Every action is recorded, who and what.
    let actions = seats::recent_actions(&c, 10).await.unwrap();
    let summary: Vec<(&str, &str)> = actions
        .iter()
        .map(|x| (x.hostname.as_str(), x.action.as_str()))
        .collect();
    assert_eq!(summary.len(), 2, "{actions:?}");
    assert!(
        summary.contains(&(a.hostname.as_str(), "reassign"))
            && summary.contains(&(b.hostname.as_str(), "release"))
    );
    assert!(actions.iter().all(|x| x.actor == "admin"));
    // Unknown VMs.
    assert_eq!(
        seats::release(&c, &host("ghost"), false, "admin").await.unwrap(),
        ActionOutcome::UnknownVm
    );
}

#[tokio::test]
async fn creating_vms_keeps_credentials_hashed_and_a_retry_changes_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let secret = Secret::generate();
    let vm = vms::NewVm {
        hostname: host("vm-a"),
        instance_id: Some("i-1".into()),
        credential_hash: Some(secret.hash()),
        status: VmStatus::Initializing,
        provision: None,
    };
    assert_eq!(vms::create_vms(&c, std::slice::from_ref(&vm)).await.unwrap(), 1);
    assert_eq!(vms::create_vms(&c, &[vm]).await.unwrap(), 0);
    let stored = vms::credential_hash(&c, &host("vm-a"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(stored.matches(&secret));
    assert!(!stored.matches(&Secret::generate()));
    assert_eq!(vms::credential_hash(&c, &host("ghost")).await.unwrap(), None);
    let raw: Vec<u8> = c
        .query_one("SELECT credential_hash FROM vms", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(raw, secret.expose().as_bytes());
    assert_eq!(vms::clear_all(&c).await.unwrap(), 1);
    assert!(vms::list_vms(&c).await.unwrap().is_empty());
}

#[tokio::test]
async fn migrations_are_idempotent_and_report_the_schema_version() {
    let db = TestDb::new().await;
    let mut c = db.client().await;
    let v = lablink_db::migrate(&mut c).await.unwrap();
    assert_eq!(v, Some(lablink_db::latest_known_version()));
    assert_eq!(lablink_db::schema_version(&c).await.unwrap(), v);
}

#[tokio::test]
async fn the_lazy_connection_connects_on_first_use_and_again_after_it_breaks() {
    let db = TestDb::new().await;
    // Nothing listens on port 1: building a Db does no network work.
    let _unused = Db::new(lablink_db::DbConfig::from_url("postgres://x@127.0.0.1:1/x").unwrap());
    let lazy = Db::new(db.config.clone());
    let first = lazy.client().await.unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = db.client().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The broken connection is noticed (the query fails) and the next call reconnects.
    let _ = first.query_one("SELECT 1", &[]).await;
    for _ in 0..100 {
        if first.is_closed() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(first.is_closed());
    drop(first);
    let second = lazy.client().await.unwrap();
    let pid2: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid, pid2);
}

#[tokio::test]
async fn the_open_export_loads_whole_in_one_query_and_each_change_and_final_answer_notifies() {
    use futures_util::StreamExt;
    use lablink_core::domain::JobId;
    use lablink_db::exports::{self, Notice};
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 3).await;

    let (listener, mut conn) = db.config.connect_raw().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send(Notice::parse(n.payload()));
            }
        }
    });
    listener.batch_execute("LISTEN vm_exports").await.unwrap();
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(300));

    assert_eq!(exports::open_export(&c).await.unwrap(), None);
    let job = JobId::parse("20261201T090000Z-01020304").unwrap();
    let spec = exports::ExportSpec {
        extensions: vec!["slp".into(), "h5".into()],
        max_file_bytes: 1 << 20,
        deadline: Utc::now() + chrono::Duration::hours(1),
    };
    let targets: Vec<_> = hosts
        .iter()
        .map(|h| {
            let t = exports::Target {
                hostname: h.clone(),
                email: None,
            };
            (t, format!("https://u/{h}"))
        })
        .collect();
    assert!(exports::start(&c, &job, &spec, &targets).await.unwrap());
    settle().await;
    assert_eq!(rx.try_recv().ok(), Some(Notice::Changed));
    let open = exports::open_export(&c).await.unwrap().expect("open");
    assert_eq!(open.job_id, job.as_str());
    assert_eq!(open.extensions, spec.extensions);
    assert_eq!(open.max_file_bytes, 1 << 20);
    assert_eq!(open.upload_urls.len(), 3);
    assert_eq!(open.upload_urls[&hosts[2]], format!("https://u/{}", hosts[2]));
    // The in-memory answer is the per-VM query's answer.
    let task = exports::task_for(&c, &hosts[0]).await.unwrap();
    assert_eq!(open.task_for(&hosts[0], Utc::now()), task);
    assert_eq!(
        open.task_for(&hosts[0], spec.deadline),
        None,
        "not at the deadline"
    );

    // Uploading keeps the task and says nothing; a final answer names the VM.
    exports::report(&c, &job, &hosts[0], &exports::Report::Uploading)
        .await
        .unwrap()
        .unwrap();
    exports::report(
        &c,
        &job,
        &hosts[1],
        &exports::Report::Done {
            files: 1,
            bytes: 2,
            skipped: 0,
        },
    )
    .await
    .unwrap()
    .unwrap();
    settle().await;
    assert_eq!(
        rx.try_recv().ok(),
        Some(Notice::Answered {
            job_id: job.as_str().into(),
            hostname: hosts[1].clone()
        })
    );
    assert_eq!(rx.try_recv().ok(), None);
    let open = exports::open_export(&c).await.unwrap().unwrap();
    let mut left: Vec<&Hostname> = open.upload_urls.keys().collect();
    left.sort();
    assert_eq!(left, [&hosts[0], &hosts[2]]);

    // Closing and finishing notify; nothing is open after.
    exports::close(&c, &job).await.unwrap();
    exports::finish(&c, &job, true).await.unwrap();
    settle().await;
    assert_eq!(rx.try_recv().ok(), Some(Notice::Changed));
    assert_eq!(rx.try_recv().ok(), Some(Notice::Changed));
    assert_eq!(exports::open_export(&c).await.unwrap(), None);

    // An export that asks no VM is open all the same, with none to hand out.
    let empty = JobId::parse("20261201T100000Z-01020305").unwrap();
    assert!(exports::start(&c, &empty, &spec, &[]).await.unwrap());
    let open = exports::open_export(&c).await.unwrap().unwrap();
    assert_eq!(open.job_id, empty.as_str());
    assert!(open.upload_urls.is_empty());
}

#[tokio::test]
async fn a_release_that_kept_files_puts_the_vm_in_the_next_export_only() {
    use lablink_db::{exports, seats};
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 3).await;
    let names = |t: Vec<exports::Target>| -> Vec<(String, Option<String>)> {
        t.into_iter()
            .map(|t| (t.hostname.as_str().to_owned(), t.email))
            .collect()
    };
    assert!(exports::targets(&c).await.unwrap().is_empty());
    seats::release(&c, &hosts[0], true, "admin").await.unwrap();
    seats::release(&c, &hosts[1], false, "admin").await.unwrap();
    // The kept files are asked for although nobody holds the VM; files not kept are not.
    assert_eq!(
        names(exports::targets(&c).await.unwrap()),
        vec![(hosts[0].as_str().to_owned(), None)]
    );
    // Once an export has finished, that release is behind it.
    c.execute(
        "INSERT INTO exports (job_id, state, extensions, max_file_bytes, deadline)
         VALUES ('20261202T000000Z-00000001', 'done', '{slp}', 1, now())",
        &[],
    )
    .await
    .unwrap();
    assert!(exports::targets(&c).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_vm_keeps_at_most_its_cap_of_log_lines_and_counts_the_oldest_it_dropped() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let hosts = running_vms(&c, 2).await;
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
    let batch = |from: i64, n: i64| -> Vec<logs::LogLine> {
        (from..from + n)
            .map(|i| logs::LogLine {
                event_id: format!("ev-{i}"),
                logged_at: t0 + chrono::Duration::seconds(i),
                message: format!("line {i}"),
            })
            .collect()
    };
    for start in [0, 40, 80] {
        assert_eq!(
            logs::append_capped(&c, &hosts[0], &batch(start, 40), 100)
                .await
                .unwrap(),
            Some(40)
        );
    }
    // A redelivered batch adds nothing and drops nothing more.
    assert_eq!(
        logs::append_capped(&c, &hosts[0], &batch(80, 40), 100)
            .await
            .unwrap(),
        Some(0)
    );
    let kept = logs::read_after(&c, &hosts[0], 0, 1000).await.unwrap();
    assert_eq!(kept.len(), 100);
    assert_eq!(kept[0].message, "line 20", "the oldest went first");
    assert_eq!(kept.last().unwrap().message, "line 119");
    assert_eq!(logs::dropped(&c, &hosts[0]).await.unwrap(), 20);
    // The other VM is untouched by the first one's cap.
    assert_eq!(
        logs::append_capped(&c, &hosts[1], &batch(0, 30), 100)
            .await
            .unwrap(),
        Some(30)
    );
    assert_eq!(logs::dropped(&c, &hosts[1]).await.unwrap(), 0);
    assert_eq!(logs::read_after(&c, &hosts[1], 0, 1000).await.unwrap().len(), 30);
}
