//! Launch, destroy and enrollment against EC2 and DynamoDB on `moto_server`, through
//! the provisioner's stream entry point (what its Lambda runs) and the real routes.

use std::sync::Arc;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine;
use chrono::Utc;
use lablink_ops::dynamo::DynamoJobStore;
use lablink_ops::{Job, JobId, JobKind, JobState, JobStore, Submitted};
use lablink_provision::Processed;
use lablink_provision::bootstrap::{DaemonArtifact, LaunchOverrides, VmSettings};
use lablink_provision::ec2::{AmiSource, Ec2Settings};
use lablink_provision::stream::{ProvisionerConfig, ProvisionerRuntime};
use lablink_testkit::{TestDb, moto};
use lablink_web::routes::{self, Route};
use lablink_web::state::AdminSource;
use lablink_web::{AppConfig, AppState};
use lambda_http::http::StatusCode;
use serde_json::{Value, json};

/// The SSM parameter standing in for AWS's public DLAMI parameter (moto refuses to create
/// `/aws/...` names, as AWS does), and the AMI it names (one of moto's).
const AMI_PARAMETER: &str = "/lablink-test/dlami-base-gpu-ubuntu";
const DLAMI: &str = "ami-12c6146b";

struct World {
    db: TestDb,
    ec2: aws_sdk_ec2::Client,
    store: Arc<DynamoJobStore>,
    rt: Arc<ProvisionerRuntime>,
    deployment: String,
}

async fn world(subnet_override: Option<&str>) -> World {
    let db = TestDb::new().await;
    let sdk = moto::sdk_config();
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let vpc = ec2.create_vpc().cidr_block("10.7.0.0/16").send().await.unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.7.1.0/24")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_owned();
    let suffix = format!("{:08x}", rand::random::<u32>());
    let sg = ec2
        .create_security_group()
        .group_name(format!("lablink-vms-{suffix}"))
        .description("LabLink VMs: outbound only")
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap();
    let deployment = format!("t{suffix}");
    let table = format!("jobs-{suffix}");
    aws_sdk_ssm::Client::new(&sdk)
        .put_parameter()
        .name(AMI_PARAMETER)
        .value(DLAMI)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let ddb = lablink_ops::dynamo::Client::new(&sdk);
    lablink_ops::dynamo::create_table(&ddb, &table).await.unwrap();
    let store = Arc::new(DynamoJobStore::new(ddb, &table));
    let config = ProvisionerConfig {
        db: db.config.clone(),
        jobs_table: table,
        ec2: Ec2Settings {
            deployment: deployment.clone(),
            // No AmiId: the image the SSM parameter names, read at launch.
            ami: AmiSource::SsmParameter(AMI_PARAMETER.into()),
            subnet_ids: vec![subnet_override.map_or(subnet_id, str::to_owned)],
            security_group_ids: vec![sg.group_id().unwrap().to_owned()],
            instance_profile_arn: None,
            api_url: "https://api.example".into(),
            log_group: format!("lablink-cloud-init-{deployment}"),
            daemon: DaemonArtifact {
                bucket: "cdk-assets-bucket".into(),
                key: "daemon-0f1e.bin".into(),
                sha256: "b".repeat(64),
                region: "us-east-1".into(),
            },
            vm: VmSettings {
                tutorial_repo: Some("https://github.com/talmolab/sleap-tutorial-data.git".into()),
                subject_software: Some("sleap".into()),
                ..VmSettings::default()
            },
        },
        export_bucket: None,
        export: Default::default(),
    };
    let rt = Arc::new(ProvisionerRuntime::with_sdk(config, sdk));
    World {
        db,
        ec2,
        store,
        rt,
        deployment,
    }
}

/// A stream batch naming `job` (what the jobs table's stream delivers on insert).
/// A VM row's status and reason.
async fn status_of(client: &tokio_postgres::Client, instance_id: &str) -> (String, Option<String>) {
    let r = client
        .query_one(
            "SELECT status, status_reason FROM vms WHERE instance_id = $1",
            &[&instance_id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

fn record(job: &JobId) -> Value {
    json!({ "Records": [{
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": { "Keys": { "pk": { "S": "job" }, "sk": { "S": job.as_str() } } }
    }]})
}

async fn submit(store: &DynamoJobStore, kind: JobKind) -> Submitted {
    let job = Job::new(JobId::generate(Utc::now()), kind, "admin", Utc::now());
    lablink_ops::submit(store, job, Utc::now()).await.unwrap()
}

async fn instances(ec2: &aws_sdk_ec2::Client, filters: Vec<Filter>) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn tag<'a>(i: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn state_for(w: &World) -> AppState {
    let config = AppConfig {
        db: w.db.config.clone(),
        legacy_vm_auth: false,
        paused: false,
        admin: AdminSource::None,
        forwarder_token_hash: None,
        jobs_table: None,
        max_vms: 50,
        deployment: lablink_core::domain::DeploymentName::parse(&w.deployment).unwrap(),
        export_bucket: None,
        vm: Default::default(),
        gate: Default::default(),
        fleet_hours: 12,
        fleet_notice: chrono::Duration::minutes(15),
        admin_cidrs: None,
        admin_secret_ttl: std::time::Duration::from_secs(60),
    };
    AppState::new(config)
}

async fn call(state: &AppState, route: Route, body: Value, bearer: Option<&str>) -> (StatusCode, Value) {
    let (_, path) = route.method_and_path();
    let mut b = lambda_http::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(lambda_http::Body::from(body.to_string())).unwrap();
    let resp = route.handle(state, req).await;
    let v = serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null);
    (resp.status(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_five_then_destroy_with_duplicate_deliveries_and_enrollment() {
    let w = world(None).await;
    let Submitted::Created(job) = submit(&w.store, JobKind::Launch { num_vms: 5 }).await else {
        panic!("the first launch is created");
    };

    // A second launch while the first has not finished is refused, naming the first.
    match submit(&w.store, JobKind::Launch { num_vms: 1 }).await {
        Submitted::Busy(Some(holder)) => assert_eq!(holder.id, job.id),
        other => panic!("expected Busy, got {other:?}"),
    }

    // The same stream record delivered twice, at the same time: one launch.
    let event = record(&job.id);
    let (a, b) = tokio::join!(w.rt.handle(&event), w.rt.handle(&event));
    let outcomes: Vec<Processed> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .flatten()
        .map(|(_, p)| p)
        .collect();
    assert!(
        outcomes.contains(&Processed::Finished(JobState::Succeeded)),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|p| matches!(p, Processed::Skipped(_))),
        "{outcomes:?}"
    );
    // And once more, later: still nothing new.
    let again = w.rt.handle(&event).await.unwrap();
    assert_eq!(again[0].1, Processed::Skipped("already finished"));

    let launched = instances(&w.ec2, vec![filter("tag:lablink:job", job.id.as_str())]).await;
    assert_eq!(launched.len(), 5, "one RunInstances for the batch, once");
    let done = w.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.events);
    assert_eq!(done.vms.len(), 5);
    let client = w.db.client().await;
    let mut secret = None;
    for i in &launched {
        let id = i.instance_id().unwrap();
        assert_eq!(tag(i, "lablink:deployment"), Some(w.deployment.as_str()));
        let host = tag(i, "lablink:hostname").expect("hostname tag");
        assert_eq!(tag(i, "Name"), Some(host));
        assert!(host.starts_with(&format!("{}-vm-", w.deployment)), "{host}");
        assert_eq!(
            i.client_token(),
            Some(job.id.as_str()),
            "ClientToken is the job id"
        );
        let row = client
            .query_one(
                "SELECT hostname, status, job_id, provision_duration_seconds IS NOT NULL, credential_hash IS NULL
                 FROM vms WHERE instance_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), host);
        assert_eq!(row.get::<_, String>(1), "initializing");
        assert_eq!(row.get::<_, String>(2), job.id.as_str());
        assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
        let ud = w
            .ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let script = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(ud.user_data().unwrap().value().unwrap())
                .unwrap(),
        )
        .unwrap();
        // A cloud-config (its env file's lines are JSON-escaped inside the YAML).
        assert!(script.starts_with("#cloud-config\n"), "{script}");
        assert!(script.contains("LABLINK_API_URL=https://api.example\\n"));
        assert!(script.contains("LABLINK_CLIENT_IMAGE=ghcr.io/talmolab/lablink-client-base-image"));
        assert!(script.contains("LABLINK_DAEMON_SHA256=bbbbbbbb"));
        // The bootstrap travels gzip'd (cloud-init's gz+b64), exactly as rendered.
        assert!(script.contains(&lablink_provision::bootstrap::bootstrap_script_gz_b64()));
        assert!(
            !script.contains("LABLINK_CREDENTIAL="),
            "user-data carries no VM credential"
        );
        let s = script
            .split("LABLINK_ENROLL_SECRET=")
            .nth(1)
            .and_then(|rest| rest.split("\\n").next())
            .expect("the enrollment secret")
            .to_owned();
        assert_eq!(i.image_id(), Some(DLAMI), "the AMI the SSM parameter names");
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("g4dn.xlarge"));
        assert_eq!(secret.get_or_insert_with(|| s.clone()), &s, "one secret per job");
    }
    let rows: i64 = client
        .query_one("SELECT count(*) FROM vms", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 5);

    // Enrollment through the real route.
    let state = state_for(&w);
    let secret = secret.unwrap();
    let first = launched[0].instance_id().unwrap();
    let (st, _) = call(
        &state,
        routes::enrollment::ENROLL,
        json!({"instance_id": first, "enrollment_secret": "wrong"}),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = call(
        &state,
        routes::enrollment::ENROLL,
        json!({"instance_id": "i-0000000000000dead", "enrollment_secret": secret}),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "an instance the job did not launch");
    // A bootstrap's failure report: refused with a wrong secret or an empty reason
    // (nothing changes); recorded with the job's secret, and the VM may still enroll
    // (its daemon then reports its own status).
    for (body, want) in [
        (
            json!({"instance_id": first, "enrollment_secret": "wrong", "bootstrap_failure": "x"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"instance_id": first, "enrollment_secret": secret, "bootstrap_failure": " \n\t "}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (st, v) = call(&state, routes::enrollment::ENROLL, body, None).await;
        assert_eq!(st, want, "{v}");
        assert_eq!(status_of(&client, first).await, ("initializing".to_owned(), None));
    }
    let (st, v) = call(
        &state,
        routes::enrollment::ENROLL,
        json!({"instance_id": first, "enrollment_secret": secret,
               "bootstrap_failure": "the client daemon's SHA-256 is 00, expected ff:\nrefusing to run it"}),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        status_of(&client, first).await,
        (
            "error".to_owned(),
            Some(
                "bootstrap failed: the client daemon's SHA-256 is 00, expected ff: refusing to run it"
                    .to_owned()
            )
        )
    );
    let (st, v) = call(
        &state,
        routes::enrollment::ENROLL,
        json!({"instance_id": first, "enrollment_secret": secret}),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["hostname"].as_str(), tag(&launched[0], "lablink:hostname"));
    let lost = v["credential"].as_str().unwrap().to_owned();
    // The answer was lost (or the VM could not save it): while the VM is initializing,
    // it enrolls again, the same hostname with a new credential that replaces the first.
    let hostname = v["hostname"].clone();
    let (st, v) = call(
        &state,
        routes::enrollment::ENROLL,
        json!({"instance_id": first, "enrollment_secret": secret}),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "a retried enrollment: {v}");
    assert_eq!(v["hostname"], hostname);
    let credential = v["credential"].as_str().unwrap().to_owned();
    assert_ne!(credential, lost);
    let (st, _) = call(
        &state,
        routes::vm::POST_VM_STATUS,
        json!({"hostname": hostname, "status": "running"}),
        Some(&lost),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the replaced credential is dead");
    let (st, v) = call(
        &state,
        routes::vm::POST_VM_STATUS,
        json!({"hostname": v["hostname"], "status": "running"}),
        Some(&credential),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "the enrolled credential works: {v}");
    // Reported in: the enrollment is settled, the shared secret cannot take the VM over.
    let (st, _) = call(
        &state,
        routes::enrollment::ENROLL,
        json!({"instance_id": first, "enrollment_secret": secret}),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "an enrollment after the VM reported in");

    // Destroy: every instance terminated, every row gone.
    let Submitted::Created(destroy) = submit(&w.store, JobKind::Destroy).await else {
        panic!("the launch finished, so destroy may start");
    };
    let out = w.rt.handle(&record(&destroy.id)).await.unwrap();
    assert_eq!(out[0].1, Processed::Finished(JobState::Succeeded));
    let live = instances(
        &w.ec2,
        vec![
            filter("tag:lablink:deployment", &w.deployment),
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        ],
    )
    .await;
    assert!(live.is_empty(), "{} still running", live.len());
    let rows: i64 = client
        .query_one("SELECT count(*) FROM vms", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let d = w.store.get(&destroy.id).await.unwrap().unwrap();
    assert_eq!(d.vms.len(), 5, "{:?}", d.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_launch_ends_the_job_with_the_aws_error_and_records_nothing() {
    let w = world(Some("subnet-0doesnotexist")).await;
    let Submitted::Created(job) = submit(&w.store, JobKind::Launch { num_vms: 2 }).await else {
        panic!("created");
    };
    let out = w.rt.handle(&record(&job.id)).await.unwrap();
    assert_eq!(out[0].1, Processed::Finished(JobState::Failed));
    let j = w.store.get(&job.id).await.unwrap().unwrap();
    let err = j.error.unwrap();
    assert!(
        err.contains("launching instances") && err.to_lowercase().contains("subnet"),
        "{err}"
    );
    let rows: i64 =
        w.db.client()
            .await
            .query_one("SELECT count(*) FROM vms", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(rows, 0);
    // The fleet is free again.
    assert!(matches!(
        submit(&w.store, JobKind::Destroy).await,
        Submitted::Created(_)
    ));
}

/// A launch's own instance type, client image and tutorial repository reach RunInstances
/// and the VM's settings, and are kept on the job with the AMI used; a capacity refusal
/// says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launchs_overrides_reach_the_vms_and_the_job_records_its_image() {
    let w = world(None).await;
    let mut job = Job::new(
        JobId::generate(Utc::now()),
        JobKind::Launch { num_vms: 2 },
        "admin",
        Utc::now(),
    );
    job.overrides = LaunchOverrides {
        instance_type: Some("g5.2xlarge".into()),
        client_image: Some("ghcr.io/example/workshop-image:2026-12".into()),
        tutorial_repo: Some("https://github.com/example/day2-data.git".into()),
    };
    let Submitted::Created(job) = lablink_ops::submit(w.store.as_ref(), job, Utc::now())
        .await
        .unwrap()
    else {
        panic!("created");
    };
    let out = w.rt.handle(&record(&job.id)).await.unwrap();
    assert_eq!(out[0].1, Processed::Finished(JobState::Succeeded));
    let done = w.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(done.image_id.as_deref(), Some(DLAMI));
    assert_eq!(done.overrides.instance_type.as_deref(), Some("g5.2xlarge"));
    assert!(
        done.events
            .iter()
            .any(|e| e.message == format!("started from image {DLAMI}")),
        "{:?}",
        done.events
    );
    let launched = instances(&w.ec2, vec![filter("tag:lablink:job", job.id.as_str())]).await;
    assert_eq!(launched.len(), 2);
    for i in &launched {
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("g5.2xlarge"));
        let ud = w
            .ec2
            .describe_instance_attribute()
            .instance_id(i.instance_id().unwrap())
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let text = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(ud.user_data().unwrap().value().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(
            text.contains("LABLINK_CLIENT_IMAGE=ghcr.io/example/workshop-image:2026-12\\n"),
            "{text}"
        );
        assert!(text.contains("LABLINK_TUTORIAL_REPO=https://github.com/example/day2-data.git\\n"));
        assert!(
            !text.contains("sleap-tutorial-data"),
            "the deployment's repository is replaced"
        );
    }
    // The job's JSON (the job page's source) shows them; the secret is not in it.
    let v = serde_json::to_string(&done).unwrap();
    assert!(v.contains("workshop-image:2026-12") && v.contains(DLAMI));
    assert!(!v.contains("ENROLL"));
}

/// The admin's per-VM replace: one job terminates that VM's instance and launches one in
/// its place; its row is replaced, its participant's page says the VM is gone, and a
/// repeated delivery of the job changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_one_vm_terminates_its_instance_and_launches_one_in_its_place() {
    use lablink_core::domain::{CrdCommand, Email, Pin};
    use lablink_db::{seats, vms};
    let w = world(None).await;
    let Submitted::Created(launch) = submit(&w.store, JobKind::Launch { num_vms: 2 }).await else {
        panic!("created");
    };
    assert_eq!(
        w.rt.handle(&record(&launch.id)).await.unwrap()[0].1,
        Processed::Finished(JobState::Succeeded)
    );
    let client = w.db.client().await;
    client
        .execute("UPDATE vms SET status = 'running'", &[])
        .await
        .unwrap();
    let email = Email::parse("ada@uni.edu").unwrap();
    let seat = vms::assign(
        &client,
        &email,
        &CrdCommand::from_code("4/0Areplace").unwrap(),
        &Pin::generate(),
    )
    .await
    .unwrap()
    .unwrap();
    let token = seats::issue_token(&client, &seat.hostname, &email).await.unwrap();
    let old = vms::get_vm(&client, &seat.hostname).await.unwrap().unwrap();
    let old_instance = old.instance_id.clone().unwrap();
    let kept = vms::list_vms(&client)
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.hostname != seat.hostname)
        .unwrap();

    let kind = JobKind::Replace {
        hostname: seat.hostname.as_str().to_owned(),
    };
    let Submitted::Created(job) = submit(&w.store, kind).await else {
        panic!("created");
    };
    seats::record_replace(&client, &seat.hostname, job.id.as_str(), "admin")
        .await
        .unwrap();
    let out = w.rt.handle(&record(&job.id)).await.unwrap();
    assert_eq!(out[0].1, Processed::Finished(JobState::Succeeded));
    let again = w.rt.handle(&record(&job.id)).await.unwrap();
    assert_eq!(again[0].1, Processed::Skipped("already finished"));

    // EC2: the old instance terminated, exactly one new one launched by this job.
    let gone = instances(&w.ec2, vec![filter("instance-id", &old_instance)]).await;
    assert_eq!(
        gone[0].state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("terminated")
    );
    let new = instances(&w.ec2, vec![filter("tag:lablink:job", job.id.as_str())]).await;
    assert_eq!(new.len(), 1, "one launch for the replace");
    let new_host = tag(&new[0], "lablink:hostname").unwrap().to_owned();
    assert_ne!(new_host, seat.hostname.as_str());
    // The rows: the old one replaced by the new one; the other VM untouched.
    let rows = vms::list_vms(&client).await.unwrap();
    let names: Vec<&str> = rows.iter().map(|v| v.hostname.as_str()).collect();
    assert_eq!(rows.len(), 2, "{names:?}");
    assert!(names.contains(&new_host.as_str()) && names.contains(&kept.hostname.as_str()));
    let replacement = rows.iter().find(|v| v.hostname.as_str() == new_host).unwrap();
    assert_eq!(replacement.instance_id.as_deref(), new[0].instance_id());
    assert_eq!(replacement.status, lablink_core::domain::VmStatus::Initializing);
    let done = w.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(done.vms.len(), 1);
    assert!(
        done.events.iter().any(|e| e.message.contains(&old_instance)),
        "{:?}",
        done.events
    );
    // The participant's page says the VM is gone; the action is on record.
    let view = seats::view(&client, token.expose(), seats::CodeLimits::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.state, seats::SeatState::Gone);
    let actions = seats::recent_actions(&client, 5).await.unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(
        (actions[0].hostname.as_str(), actions[0].action.as_str()),
        (seat.hostname.as_str(), "replace")
    );
    assert!(actions[0].detail.contains(job.id.as_str()) && actions[0].detail.contains("ada@uni.edu"));
}
