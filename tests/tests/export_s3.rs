//! Data export against S3 and DynamoDB on `moto_server`, through the provisioner's
//! stream entry point (what its Lambda runs): each VM PUTs its archive (made by the
//! daemon's own code) to its presigned URL, the job assembles the zip with a multipart
//! upload of more than one part, and the admin's presigned link downloads it.

use std::sync::Arc;
use std::time::Duration;

use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::{exports, vms};
use lablink_e2e::{eventually, read_zip};
use lablink_export::{Download, ExportStorage, S3Storage};
use lablink_ops::dynamo::DynamoJobStore;
use lablink_ops::{Job, JobId, JobKind, JobState, JobStore, Submitted};
use lablink_provision::ec2::Ec2Settings;
use lablink_provision::stream::{ProvisionerConfig, ProvisionerRuntime};
use lablink_provision::{ExportSettings, Processed};
use lablink_testkit::{TestDb, moto};
use serde_json::json;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_upload_to_presigned_urls_and_the_zip_is_a_multipart_object_behind_a_presigned_link() {
    let db = TestDb::new().await;
    let sdk = moto::sdk_config();
    let suffix = format!("{:08x}", rand::random::<u32>());
    let bucket = format!("lablink-exports-{suffix}");
    let s3 = S3Storage::new(&sdk, &bucket);
    s3.client.create_bucket().bucket(&bucket).send().await.unwrap();
    let table = format!("jobs-{suffix}");
    let ddb = lablink_ops::dynamo::Client::new(&sdk);
    lablink_ops::dynamo::create_table(&ddb, &table).await.unwrap();
    let store = Arc::new(DynamoJobStore::new(ddb, &table));

    // Two VMs with participants, one free VM (not asked).
    let client = db.client().await;
    let hosts = ["t-vm-001", "t-vm-002", "t-vm-003"];
    let new: Vec<vms::NewVm> = hosts
        .iter()
        .map(|h| vms::NewVm {
            hostname: Hostname::parse(h).unwrap(),
            instance_id: None,
            credential_hash: Some(Secret::generate().hash()),
            status: VmStatus::Running,
            provision: None,
        })
        .collect();
    vms::create_vms(&client, &new).await.unwrap();
    // Assignment takes any free VM: mark the third busy first, so the first two get
    // participants, then free it again.
    client
        .execute(
            "UPDATE vms SET status = 'initializing' WHERE hostname = 't-vm-003'",
            &[],
        )
        .await
        .unwrap();
    for i in 1..=2 {
        let email = lablink_core::domain::Email::parse(&format!("p{i}@uni.edu")).unwrap();
        let code = lablink_core::domain::CrdCommand::from_code(&format!("4/0Aexport{i}")).unwrap();
        let pin = lablink_core::domain::Pin::parse("123456").unwrap();
        vms::assign(&client, &email, &code, &pin).await.unwrap().unwrap();
    }
    client
        .execute(
            "UPDATE vms SET status = 'running' WHERE hostname = 't-vm-003'",
            &[],
        )
        .await
        .unwrap();

    let config = ProvisionerConfig {
        db: db.config.clone(),
        jobs_table: table,
        ec2: Ec2Settings {
            deployment: "t".into(),
            ami: lablink_provision::ec2::AmiSource::Id("ami-12c6146b".into()),
            subnet_ids: vec![],
            security_group_ids: vec![],
            instance_profile_arn: None,
            api_url: "https://api.example".into(),
            log_group: "lablink-cloud-init-t".into(),
            daemon: lablink_provision::bootstrap::DaemonArtifact {
                bucket: "assets".into(),
                key: "daemon.bin".into(),
                sha256: "c".repeat(64),
                region: "us-east-1".into(),
            },
            vm: Default::default(),
        },
        export_bucket: Some(bucket.clone()),
        export: ExportSettings {
            extensions: vec!["slp".into()],
            max_file_bytes: 64 << 20,
            wait: Duration::from_secs(60),
        },
    };
    let rt = Arc::new(ProvisionerRuntime::with_sdk(config, sdk.clone()));
    let now = chrono::Utc::now();
    let job = Job::new(JobId::generate(now), JobKind::Export, "admin", now);
    let Submitted::Created(job) = lablink_ops::submit(store.as_ref(), job, now).await.unwrap() else {
        panic!("the export is queued")
    };
    let record = json!({ "Records": [{ "eventName": "INSERT",
        "dynamodb": { "Keys": { "pk": { "S": "job" }, "sk": { "S": job.id.as_str() } } } }] });
    let run = tokio::spawn({
        let rt = Arc::clone(&rt);
        async move { rt.handle(&record).await }
    });

    // The VMs: each waits for its task (what the holder reads), writes its archive with
    // the daemon's code and PUTs it to the presigned URL.
    let big = (0..9 * 1024 * 1024 + 17)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>();
    let small = b"frame,x,y\n1,2,3\n".to_vec();
    let ws = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut urls = Vec::new();
    let assigned: Vec<(String, String)> = client
        .query(
            "SELECT hostname, user_email FROM vms WHERE user_email IS NOT NULL ORDER BY user_email",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(assigned.len(), 2);
    let (first, second) = (assigned[0].0.clone(), assigned[1].0.clone());
    for (host, files) in [
        (first.as_str(), vec![("big.slp", &big), ("a/small.slp", &small)]),
        (second.as_str(), vec![("only.slp", &small)]),
    ] {
        let h = Hostname::parse(host).unwrap();
        let task = eventually("the export opens", Duration::from_secs(30), || async {
            exports::task_for(&client, &h).await.unwrap()
        })
        .await
        .unwrap();
        assert!(
            task.upload_url
                .contains(&format!("/{bucket}/exports/{}/vms/{host}.tar", job.id))
                && task.upload_url.contains("X-Amz-Signature="),
            "a presigned URL for this VM's object only: {}",
            task.upload_url
        );
        let root = ws.path().join(host);
        for (name, data) in files {
            std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
            std::fs::write(root.join(name), data).unwrap();
        }
        let tar = ws.path().join(format!("{host}.tar"));
        let got =
            lablink_client_daemon::export::write_archive(&root, &task.extensions, 64 << 20, &tar).unwrap();
        let body = std::fs::read(&tar).unwrap();
        // As the daemon sends it (the presigned request may sign its content type).
        let put = http
            .put(&task.upload_url)
            .header("content-type", "application/x-tar")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.text().await.unwrap());
        let report = exports::Report::Done {
            files: got.files as i64,
            bytes: got.bytes as i64,
            skipped: 0,
        };
        exports::report(&client, &job.id, &h, &report)
            .await
            .unwrap()
            .unwrap();
        urls.push(task.upload_url);
    }

    let processed = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        processed,
        vec![(job.id.clone(), Processed::Finished(JobState::Succeeded))]
    );
    let done = store.get(&job.id).await.unwrap().unwrap();
    let outcome = done.export.clone().expect("the job names its zip");
    assert_eq!(
        (outcome.files, outcome.bytes),
        (3, (big.len() + 2 * small.len()) as u64)
    );

    // The zip is a multipart object of more than one 8 MiB part.
    let key = format!("exports/{}/{}", job.id, outcome.file);
    let head = s3
        .client
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(outcome.zip_bytes as i64));
    let etag = head.e_tag().unwrap_or_default().trim_matches('"').to_owned();
    assert!(etag.ends_with("-2"), "two parts: {etag}");

    // The admin's link: presigned, short-lived, and it downloads the zip.
    let Download::Redirect(link) = s3
        .download(job.id.as_str(), &outcome.file, Duration::from_secs(300))
        .await
        .unwrap()
    else {
        panic!("a presigned link")
    };
    assert!(link.contains("X-Amz-Expires=300"), "{link}");
    let zip_bytes = http.get(&link).send().await.unwrap().bytes().await.unwrap();
    let path = ws.path().join(&outcome.file);
    std::fs::write(&path, &zip_bytes).unwrap();
    let z = read_zip(&path).unwrap();
    assert!(z["bad"].is_null(), "{z}");
    let mut names: Vec<&str> = z["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    names.sort();
    let mut want = vec![
        "manifest.csv".to_owned(),
        format!("{first}/a/small.slp"),
        format!("{first}/big.slp"),
        format!("{second}/only.slp"),
    ];
    want.sort();
    assert_eq!(names, want);
    let manifest = z["manifest"].as_str().unwrap();
    let big_row = manifest
        .lines()
        .find(|l| l.starts_with(&format!("{first},p1@uni.edu,big.slp,")))
        .unwrap_or_else(|| panic!("{manifest}"));
    assert!(big_row.contains(&hex::encode(Sha256::digest(&big))), "{big_row}");
    let free: String = client
        .query_one("SELECT hostname FROM vms WHERE user_email IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        !manifest.contains(&free),
        "a VM without a participant is not asked"
    );

    // The job is finished: its upload URLs' export no longer takes reports.
    let late = exports::report(
        &client,
        &job.id,
        &Hostname::parse(&first).unwrap(),
        &exports::Report::Uploading,
    )
    .await
    .unwrap();
    assert_eq!(late, Err(exports::Refused::Closed));
    assert_eq!(urls.len(), 2);
}
