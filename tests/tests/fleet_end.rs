//! A fleet cannot be forgotten: its end time destroys it through a job like any other,
//! announced on the participants' pages shortly before. The tick's rules against a real
//! Postgres and job store, then the whole thing on the local runner with compressed
//! times (a tick every second, a 30-second notice).

use std::sync::Arc;
use std::time::Duration;

use chrono::{Timelike, Utc};
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::{Db, fleet, vms};
use lablink_e2e::{LocalStack, eventually};
use lablink_ops::{Job, JobId, JobKind, JobStore, pg::PgJobStore};
use lablink_provision::schedule::{self, Tick};
use lablink_testkit::TestDb;

async fn vms_running(c: &tokio_postgres::Client, n: usize) {
    let new: Vec<_> = (0..n)
        .map(|i| vms::NewVm {
            hostname: Hostname::parse(&format!("lablink-vm-end-{i}")).unwrap(),
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Running,
            provision: None,
        })
        .collect();
    vms::create_vms(c, &new).await.unwrap();
}

#[tokio::test]
async fn the_end_time_submits_one_destroy_job_and_a_destroy_clears_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let pool = Arc::new(Db::new(db.config.clone()));
    let store = PgJobStore::new(Arc::clone(&pool));
    // Postgres keeps microseconds: whole seconds compare exactly.
    let now = Utc::now().with_nanosecond(0).unwrap();
    assert_eq!(schedule::tick(&store, &pool, now).await.unwrap(), Tick::NoEnd);

    // A launch sets the end; a later launch never shortens it; the admin may.
    let end = now + chrono::Duration::hours(2);
    assert_eq!(fleet::set_end(&c, end, "admin", true).await.unwrap(), end);
    assert_eq!(
        fleet::set_end(&c, now + chrono::Duration::hours(1), "admin", true)
            .await
            .unwrap(),
        end,
        "a launch keeps the later end"
    );
    let soon = now + chrono::Duration::minutes(5);
    assert_eq!(fleet::set_end(&c, soon, "admin", false).await.unwrap(), soon);
    assert_eq!(
        schedule::tick(&store, &pool, now).await.unwrap(),
        Tick::NotYet(soon)
    );

    // Past the end with no VM: nothing to destroy, the end is forgotten.
    let later = soon + chrono::Duration::seconds(1);
    assert_eq!(
        schedule::tick(&store, &pool, later).await.unwrap(),
        Tick::NothingToDestroy
    );
    assert_eq!(fleet::end(&c).await.unwrap(), None);

    // With VMs: one destroy job, however many ticks.
    vms_running(&c, 2).await;
    fleet::set_end(&c, soon, "admin", false).await.unwrap();
    // Another job holds the fleet: the tick waits for the next one.
    let launch = Job::new(JobId::generate(now), JobKind::Launch { num_vms: 1 }, "admin", now);
    assert!(matches!(
        lablink_ops::submit(&store, launch.clone(), now).await.unwrap(),
        lablink_ops::Submitted::Created(_)
    ));
    assert_eq!(schedule::tick(&store, &pool, later).await.unwrap(), Tick::Busy);
    store.release_lock(&launch.id).await.unwrap();
    let id = schedule::destroy_job_id(soon);
    assert_eq!(
        schedule::tick(&store, &pool, later).await.unwrap(),
        Tick::Submitted(id.clone())
    );
    for _ in 0..3 {
        assert_eq!(
            schedule::tick(&store, &pool, later + chrono::Duration::minutes(1))
                .await
                .unwrap(),
            Tick::AlreadySubmitted(id.clone())
        );
    }
    let mut job = store.get(&id).await.unwrap().expect("the destroy job");
    assert_eq!(job.kind, JobKind::Destroy);
    assert_eq!(job.requested_by, schedule::SCHEDULER);
    let all: i64 = c
        .query_one("SELECT count(*) FROM ops_jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 2, "the launch and one destroy");
    // The destroy failed (EC2 refused): the next tick submits another attempt.
    job.state = lablink_ops::JobState::Failed;
    assert!(store.replace(&job).await.unwrap());
    store.release_lock(&id).await.unwrap();
    let Tick::Submitted(again) = schedule::tick(&store, &pool, later).await.unwrap() else {
        panic!("a new attempt after a failed destroy");
    };
    assert_ne!(again, id);
    assert_eq!(
        schedule::tick(&store, &pool, later).await.unwrap(),
        Tick::AlreadySubmitted(again)
    );

    // The destroy clears the end with the fleet.
    fleet::clear_fleet(&c).await.unwrap();
    assert_eq!(fleet::end(&c).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_runner_announces_the_end_then_destroys_the_fleet() {
    let db = TestDb::new().await;
    let state = tempfile::tempdir().unwrap();
    let admin = ("admin", "fleet-end-test-password");
    let stack = LocalStack::start_with(
        &db.url,
        state.path(),
        2,
        admin,
        &[
            ("LABLINK_FLEET_TICK_SECONDS", "1"),
            ("LABLINK_FLEET_NOTICE_SECONDS", "30"),
        ],
    )
    .await
    .unwrap();
    stack.wait_for_free_vms(2, Duration::from_secs(60)).await.unwrap();
    let base = stack.url.clone();
    let http = reqwest::Client::new();

    // A participant's seat.
    let command = "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0AfleetEnd\" \
                   --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)";
    let page = http
        .post(format!("{base}/api/request_vm"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("email", "ada@uni.edu"), ("crd_command", command)]).unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("href=\"/seat/").expect("the seat's link") + 12;
    let token = page[at..at + 64].to_owned();
    let seat = |http: reqwest::Client| {
        let url = format!("{base}/api/seat/{token}");
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    assert!(
        seat(http.clone()).await.get("fleet_ends_at").is_none(),
        "no end, no notice"
    );

    // The admin sets the end 12 s ahead (a script: Basic, JSON).
    let ends_at = (Utc::now() + chrono::Duration::seconds(12))
        .with_nanosecond(0)
        .unwrap();
    let r = http
        .post(format!("{base}/api/admin/fleet-end"))
        .basic_auth(admin.0, Some(admin.1))
        .json(&serde_json::json!({ "ends_at": ends_at.to_rfc3339() }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Within the notice the participant's page announces it.
    let v = seat(http.clone()).await;
    let announced: chrono::DateTime<Utc> = v["fleet_ends_at"].as_str().expect("announced").parse().unwrap();
    assert_eq!(announced, ends_at);
    let html = http
        .get(format!("{base}/seat/{token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("will be shut down at"), "{html}");

    // At the end a destroy job runs, like one the admin submits; the fleet is gone.
    let job = schedule::destroy_job_id(ends_at);
    eventually("the scheduled destroy succeeded", Duration::from_secs(90), || {
        let http = http.clone();
        let url = format!("{base}/api/jobs/{job}");
        async move {
            let v: serde_json::Value = http
                .get(url)
                .basic_auth(admin.0, Some(admin.1))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            // Not submitted yet: 404 {"error"}.
            v.get("state")?;
            assert_ne!(v["state"], "failed", "{v}");
            assert_eq!(v["requested_by"], schedule::SCHEDULER);
            (v["state"] == "succeeded").then_some(())
        }
    })
    .await
    .unwrap();
    let left: serde_json::Value = http
        .get(format!("{base}/api/vm-status"))
        .basic_auth(admin.0, Some(admin.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(left, serde_json::json!([]), "no VM left");
    assert_eq!(seat(http.clone()).await["state"], "gone");
    assert!(
        seat(http.clone()).await.get("fleet_ends_at").is_none(),
        "the end went with the fleet"
    );
}
