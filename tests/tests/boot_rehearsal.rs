//! The VM boot, rehearsed for real (issue 29). A systemd container plays the EC2 VM
//! (`tests/vm-rehearsal/`: Debian, its own network namespace, its own Docker engine with
//! `/var/lib/docker` on a volume, Debian's cloud-init with the NoCloud datasource, the AWS
//! CLI v1 and a stand-in metadata service on 169.254.169.254). It boots with exactly the
//! user-data the provisioner renders for a launch (`Bootstrap::user_data`, with the rows
//! and enrollment secret a launch records): cloud-init writes the files and runs the
//! bootstrap, the CLI fetches the daemon from `moto_server`'s S3 with the instance role
//! the stand-in metadata service hands out, checks its SHA-256, systemd starts it, and the
//! daemon enrolls with the API, prepares its workspace on the VM's own engine and reports
//! `running`. A tampered daemon and an image without the AWS CLI run nothing and are
//! reported by the bootstrap itself within seconds. What differs from EC2 (the datasource, the CLI's endpoint, the metadata)
//! is only in the image and the seed, never in the user-data.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, Phase, VmStatus};
use lablink_db::{fleet, vms};
use lablink_e2e::{ApiServer, HolderProc, docker, eventually, workspace_bin};
use lablink_ops::JobId;
use lablink_provision::bootstrap::{Bootstrap, DaemonArtifact, VmSettings};
use lablink_testkit::{TestDb, moto};
use sha2::Digest;

/// What the stand-in metadata service answers at `/lablink-rehearsal`.
const IMDS_MARKER: &str = "lablink-standin-imds";
const BUCKET: &str = "lablink-rehearsal-assets";

fn vm_image() -> String {
    std::env::var("LABLINK_TEST_VM_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| lablink_testkit::docker::from_lib_sh("ensure_test_vm_image"))
}

/// The Docker bridge's gateway: where the rehearsal VM reaches this machine's API and
/// moto (its own network namespace reaches nothing else of this machine).
fn gateway() -> String {
    docker(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
    ])
}

/// The flags that run a systemd container with its own Docker engine here
/// (`--privileged` is refused on this machine: shared/DESIGN.md's last notes).
const SYSTEM_FLAGS: &[&str] = &[
    "--cap-add=SYS_ADMIN",
    "--cap-add=NET_ADMIN",
    "--cap-add=SYS_PTRACE",
    "--cap-add=SYS_MODULE",
    "--cap-add=MKNOD",
    "--cap-add=SYS_NICE",
    "--cap-add=IPC_LOCK",
    "--cap-add=NET_RAW",
    "--cap-add=SYS_CHROOT",
    "--cap-add=AUDIT_CONTROL",
    "--cap-add=SYS_BOOT",
    "--cap-add=SYS_TIME",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs=/run",
    "--tmpfs=/run/lock",
    "--env=container=docker",
];

/// A container removed (with its anonymous volumes) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

/// The VM's engine volume with the client image loaded, as a VM whose image pull is
/// done (one volume per client image: loading 1 GB is done once per content, and the
/// volumes of other contents go). Containers and volumes a rehearsal left are removed.
fn engine_volume(vm_image: &str, client_image: &str) -> String {
    let vol = format!(
        "lablink-rehearsal-engine-{}",
        client_image.replace([':', '/'], "-")
    );
    for old in docker(&["volume", "ls", "-q", "--filter", "name=lablink-rehearsal-engine-"]).lines() {
        if old != vol {
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", old])
                .output();
        }
    }
    let prep = Container(format!(
        "lablink-rehearsal-prep-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    ));
    let mut args = vec!["run", "-d", "--name", &prep.0];
    args.extend_from_slice(SYSTEM_FLAGS);
    let mount = format!("{vol}:/var/lib/docker");
    args.extend_from_slice(&["-v", &mount, "--entrypoint", "dockerd", vm_image]);
    docker(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::process::Command::new("docker")
        .args(["exec", &prep.0, "docker", "info"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "the rehearsal's engine did not start");
        std::thread::sleep(Duration::from_millis(300));
    }
    let present = std::process::Command::new("docker")
        .args(["exec", &prep.0, "docker", "image", "inspect", client_image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let t = Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save '{client_image}' | docker exec -i {} docker load -q",
                prep.0
            ))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "loading {client_image} into the rehearsal's engine"
        );
        eprintln!("loaded {client_image} into {vol} in {:?}", t.elapsed());
    }
    docker(&[
        "exec",
        &prep.0,
        "sh",
        "-c",
        "docker ps -aq | xargs -r docker rm -f >/dev/null; docker volume prune -f >/dev/null",
    ]);
    vol
}

struct Launch {
    hostname: Hostname,
    instance_id: String,
    user_data: String,
}

/// The rows, the enrollment secret and the user-data of a one-VM launch, as the
/// provisioner makes them.
async fn launch(
    client: &tokio_postgres::Client,
    api_url: &str,
    daemon: &DaemonArtifact,
    vm: &VmSettings,
) -> Launch {
    let job = JobId::generate(Utc::now());
    let secret = Secret::generate();
    fleet::add_enrollment_secret(
        client,
        job.as_str(),
        &secret.hash(),
        Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    let hostname = Hostname::parse(&format!("rh{:06x}-vm-1", rand::random::<u32>() & 0xff_ffff)).unwrap();
    let instance_id = format!("i-0{:016x}", rand::random::<u64>());
    let now = Utc::now();
    fleet::record_launched(
        client,
        job.as_str(),
        &[fleet::Launched {
            hostname: hostname.clone(),
            instance_id: instance_id.clone(),
        }],
        Phase::new("provision", now, now).unwrap(),
    )
    .await
    .unwrap();
    let user_data = Bootstrap {
        job: &job,
        api_url,
        log_group: "lablink-cloud-init-rehearsal",
        enrollment_secret: secret.expose(),
        daemon,
        vm,
    }
    .user_data()
    .unwrap();
    Launch {
        hostname,
        instance_id,
        user_data,
    }
}

/// Boot the rehearsal VM for `launch`: the seed (NoCloud meta-data and the user-data as
/// rendered; the metadata service's instance and role; the CLI's endpoint) in `dir`.
fn boot(
    vm_image: &str,
    volume: &str,
    dir: &Path,
    launch: &Launch,
    moto_url: &str,
    extra: &[&str],
) -> Container {
    let seed = dir.join("nocloud");
    let rehearsal = dir.join("rehearsal");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::create_dir_all(&rehearsal).unwrap();
    std::fs::write(
        seed.join("meta-data"),
        format!(
            "instance-id: {}\nlocal-hostname: ip-10-7-1-23\n",
            launch.instance_id
        ),
    )
    .unwrap();
    std::fs::write(seed.join("user-data"), &launch.user_data).unwrap();
    std::fs::write(
        rehearsal.join("imds.json"),
        serde_json::json!({
            "instance_id": launch.instance_id,
            "region": "us-east-1",
            "role": "lablink-vm-rehearsal",
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        rehearsal.join("aws-config"),
        format!("[default]\nendpoint_url = {moto_url}\ns3 =\n    addressing_style = path\n"),
    )
    .unwrap();
    let name = Container(format!("lablink-rehearsal-{}", launch.hostname));
    let mut args = vec!["run", "-d", "--name", &name.0];
    args.extend_from_slice(SYSTEM_FLAGS);
    let engine = format!("{volume}:/var/lib/docker");
    let seed_mount = format!("{}:/var/lib/cloud/seed/nocloud:ro", seed.display());
    let rehearsal_mount = format!("{}:/etc/lablink-rehearsal:ro", rehearsal.display());
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-v", &engine, "-v", &seed_mount, "-v", &rehearsal_mount, vm_image]);
    docker(&args);
    // Nothing is trusted at 169.254.169.254 but the stand-in: never a real metadata
    // service of the machine running the tests.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new("docker")
            .args([
                "exec",
                &name.0,
                "curl",
                "-s",
                "-m",
                "2",
                "http://169.254.169.254/lablink-rehearsal",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == IMDS_MARKER {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusing to rehearse: 169.254.169.254 in the VM does not answer with the stand-in's marker"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    name
}

/// The VM's row once its bootstrap reported a failure (`error`), within 3 minutes.
async fn reported_error(client: &tokio_postgres::Client, host: &Hostname, ctr: &Container) -> vms::Vm {
    eventually(
        "the bootstrap's failure report",
        Duration::from_secs(180),
        || async {
            vms::get_vm(client, host)
                .await
                .ok()
                .flatten()
                .filter(|v| v.status == VmStatus::Error)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", in_vm(&ctr.0, "cat /var/log/cloud-init-output.log")))
}

fn in_vm(ctr: &str, script: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", ctr, "sh", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_from_its_rendered_user_data_to_running_and_a_tampered_daemon_never_runs() {
    let vm_image = vm_image();
    let client_image = lablink_e2e::test_client_image();
    let gw = gateway();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new().await;
    let client = db.client().await;
    let holder = HolderProc::start(&db.url, "127.0.0.1:0".parse().unwrap(), &[])
        .await
        .unwrap();
    let api = ApiServer::start_at(&db.config, &gw, Some(&holder.url()))
        .await
        .unwrap();
    let moto_url = moto::start_on(&gw).unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&moto::sdk_config_at(&moto_url))
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let daemon_bytes = std::fs::read(workspace_bin("lablink-client-daemon").unwrap()).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&daemon_bytes));
    let key = format!("{sha}.bin");
    s3.put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(daemon_bytes.into())
        .send()
        .await
        .unwrap();
    let volume = engine_volume(&vm_image, &client_image);
    let (_git, repo) = lablink_e2e::git_daemon_on(dir.path(), &gw).await;
    let vm = VmSettings {
        client_image: client_image.clone(),
        tutorial_repo: Some(repo),
        startup_script: Some(
            "#!/bin/sh\necho \"rehearsed for $LABLINK_DESKTOP_USER\" > /var/tmp/startup-ran\n".into(),
        ),
        ..VmSettings::default()
    };
    let daemon = DaemonArtifact {
        bucket: BUCKET.into(),
        key: key.clone(),
        sha256: sha.clone(),
        region: "us-east-1".into(),
    };

    // A good boot: cloud-init → bootstrap → daemon → enrolled → workspace → running.
    let good = launch(&client, &api.url(), &daemon, &vm).await;
    let (t0, booted_at) = (Instant::now(), Utc::now());
    let ctr = boot(
        &vm_image,
        &volume,
        &dir.path().join("good"),
        &good,
        &moto_url,
        &[],
    );
    let running = eventually("the rehearsal VM running", Duration::from_secs(360), || async {
        vms::get_vm(&client, &good.hostname)
            .await
            .ok()
            .flatten()
            .filter(|v| v.status == VmStatus::Running && v.startup_script.is_some())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\ncloud-init: {}\ndaemon: {}",
            in_vm(&ctr.0, "tail -n 30 /var/log/cloud-init-output.log"),
            in_vm(&ctr.0, "tail -n 30 /var/log/lablink-client.log")
        )
    });
    let boot_to_running = t0.elapsed();
    let enrolled = client
        .query_one(
            "SELECT extract(epoch FROM enrolled_at)::float8 FROM vms WHERE hostname = $1",
            &[&good.hostname.as_str()],
        )
        .await
        .unwrap()
        .get::<_, Option<f64>>(0)
        .expect("enrolled");
    // The bootstrap's own account of the download and the SHA-256 check.
    let fetched = in_vm(
        &ctr.0,
        "sed -n 's/.*client daemon fetched and checked in \\([0-9]*\\) s.*/\\1/p' /var/log/cloud-init-output.log",
    );
    assert!(
        !fetched.is_empty(),
        "{}",
        in_vm(&ctr.0, "cat /var/log/cloud-init-output.log")
    );
    let secs = |p: Option<Phase>| p.map_or("-".to_owned(), |p| format!("{:.1} s", p.seconds()));
    eprintln!(
        "rehearsal boot → running {:.1} s: cloud-init {}, daemon download and check {} s, enrolled at +{:.1} s, image {}, container {}, clone {}, script {}",
        boot_to_running.as_secs_f64(),
        secs(running.cloud_init),
        fetched,
        enrolled - booted_at.timestamp_millis() as f64 / 1e3,
        secs(running.image_pull),
        secs(running.container),
        secs(running.tutorial_clone),
        secs(running.startup_script),
    );
    assert!(
        running.cloud_init.is_some(),
        "cloud-init's phase, from its own record"
    );
    assert!(running.tutorial_clone.is_some() && running.startup_script.is_some());
    // The daemon the VM runs is the deployment's, checked; it runs under systemd.
    assert_eq!(
        in_vm(
            &ctr.0,
            "sha256sum /usr/local/bin/lablink-client-daemon | cut -d' ' -f1"
        ),
        sha
    );
    assert_eq!(
        in_vm(&ctr.0, "systemctl is-active lablink-client.service"),
        "active"
    );
    // Its workspace is on the VM's own engine, not this machine's.
    let ws = format!("lablink-workspace-{}", good.hostname);
    assert_eq!(
        in_vm(
            &ctr.0,
            &format!("docker inspect -f '{{{{.State.Running}}}}' {ws}")
        ),
        "true"
    );
    assert!(
        !docker(&["ps", "-a", "--format", "{{.Names}}"]).contains(&ws),
        "the workspace must not be on the CI machine's engine"
    );
    // The workshop's set-up ran in the workspace: the tutorial on the desktop user's
    // Desktop, the startup script from the user-data.
    assert_eq!(
        in_vm(&ctr.0, &format!("docker exec {ws} cat /var/tmp/startup-ran")),
        "rehearsed for client"
    );
    assert_eq!(
        in_vm(
            &ctr.0,
            &format!("docker exec {ws} stat -c %U /home/client/Desktop/tutorial/README.md")
        ),
        "client"
    );
    // The metadata service (the user-data with the enrollment secret, the role's
    // credentials) is closed to the desktop user in the workspace, which shares the
    // VM's network; root (the daemon: it enrolled through it) still reaches it, and so
    // does root in the workspace (the admin's startup script), which shows it is the
    // guard, not the network, that refuses.
    let reach = |user: &str| {
        let t = Instant::now();
        let said = in_vm(
            &ctr.0,
            &format!(
                "timeout 10 docker exec -u {user} {ws} bash -c 'echo > /dev/tcp/169.254.169.254/80' 2>&1; echo \"exit=$?\""
            ),
        );
        (said, t.elapsed())
    };
    let (said, took) = reach("client");
    assert!(
        said.contains("Connection refused") && said.ends_with("exit=1"),
        "the desktop user is refused at once: {said}"
    );
    assert!(
        took < Duration::from_secs(5),
        "refused, not left to time out: {took:?}"
    );
    let (said, _) = reach("0");
    assert!(said.ends_with("exit=0"), "root reaches it: {said}");
    let rules = in_vm(&ctr.0, "iptables -S OUTPUT");
    assert!(
        rules.lines().any(|r| r.contains("-d 169.254.169.254/32")
            && r.contains("-p tcp")
            && r.contains("! --uid-owner 0")
            && r.contains("-j REJECT")),
        "{rules}"
    );
    assert_eq!(
        in_vm(&ctr.0, "systemctl is-enabled lablink-imds-guard.service"),
        "enabled",
        "it holds after a reboot"
    );
    assert_eq!(
        in_vm(&ctr.0, "stat -c '%a %U' /etc/lablink/client.env"),
        "600 root"
    );
    // Docker's cgroup driver, as NVIDIA documents against losing the GPU on a reload.
    assert_eq!(
        in_vm(&ctr.0, "docker info --format '{{.CgroupDriver}}'"),
        "cgroupfs"
    );
    assert!(
        in_vm(&ctr.0, "cat /etc/docker/daemon.json").contains("native.cgroupdriver=cgroupfs"),
        "set by the bootstrap, not the engine's default"
    );
    drop(ctr);

    // A tampered asset: same checksum in the user-data, other bytes in the bucket. The
    // bootstrap refuses it; no daemon runs.
    let bad_key = format!("{sha}-tampered.bin");
    s3.put_object()
        .bucket(BUCKET)
        .key(&bad_key)
        .body(b"#!/bin/sh\necho pwned > /tmp/pwned\n".to_vec().into())
        .send()
        .await
        .unwrap();
    let tampered = launch(
        &client,
        &api.url(),
        &DaemonArtifact {
            key: bad_key,
            ..daemon.clone()
        },
        &vm,
    )
    .await;
    let ctr = boot(
        &vm_image,
        &volume,
        &dir.path().join("tampered"),
        &tampered,
        &moto_url,
        &[],
    );
    // Reported at once by the bootstrap itself, with the launch's secret: the admin sees
    // why on the VM's row, not the 20-minute deadline.
    let t = Instant::now();
    let failed = reported_error(&client, &tampered.hostname, &ctr).await;
    eprintln!(
        "tampered daemon: reported {:.1} s after boot",
        t.elapsed().as_secs_f64()
    );
    let reason = failed.status_reason.unwrap_or_default();
    assert!(
        reason.starts_with("bootstrap failed: the client daemon's SHA-256 is ")
            && reason.ends_with(&format!("expected {sha}: refusing to run it")),
        "{reason}"
    );
    let status = in_vm(
        &ctr.0,
        "timeout 300 cloud-init status --wait >/dev/null; cloud-init status",
    );
    let log = in_vm(&ctr.0, "cat /var/log/cloud-init-output.log");
    assert!(
        log.contains("refusing to run it") && log.contains("reported to the API"),
        "{status}\n{log}"
    );
    assert_eq!(
        in_vm(
            &ctr.0,
            "test -e /usr/local/bin/lablink-client-daemon && echo present || echo absent"
        ),
        "absent"
    );
    assert_eq!(
        in_vm(&ctr.0, "systemctl is-active lablink-client.service"),
        "inactive"
    );
    assert_eq!(in_vm(&ctr.0, "test -e /tmp/pwned && echo ran || echo no"), "no");
    drop(ctr);

    // An image without the AWS CLI (it is hidden): reported as such, nothing downloaded.
    let no_cli = launch(&client, &api.url(), &daemon, &vm).await;
    let ctr = boot(
        &vm_image,
        &volume,
        &dir.path().join("no-cli"),
        &no_cli,
        &moto_url,
        &["--tmpfs=/opt/awscli"],
    );
    let failed = reported_error(&client, &no_cli.hostname, &ctr).await;
    assert_eq!(
        failed.status_reason.as_deref(),
        Some(
            "bootstrap failed: no aws command on the PATH: the VM image needs the AWS CLI to fetch the client daemon"
        )
    );
    assert_eq!(
        in_vm(
            &ctr.0,
            "test -e /usr/local/bin/lablink-client-daemon && echo present || echo absent"
        ),
        "absent"
    );
}
