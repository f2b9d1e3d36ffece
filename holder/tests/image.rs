//! The holder's container image (`infra-cdk/holder/Dockerfile`), built from source by
//! `scripts/build-holder-image` on a real Docker engine, run as the ECS task runs it:
//! `setup-db` as the database's master user (the task's db-setup container), then the
//! holder as `lablink_app`, which answers `/healthz` and holds a VM's long-poll until an
//! assignment wakes it. No registry is reachable here, so the two pinned base images are
//! replaced by stand-ins built locally (`scripts/lib.sh`, `ensure_test_holder_bases`:
//! Debian by debootstrap, with this machine's Rust toolchain in the builder), and RDS's CA
//! bundle by a self-signed certificate with its own pin. `scripts/test` builds the image
//! and exports `LABLINK_TEST_HOLDER_IMAGE`; a bare `cargo test` builds it here.

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lablink_core::credential::Secret;
use lablink_core::domain::{CrdCommand, Email, Hostname, Pin, VmStatus};
use lablink_db::roles::{APP, PUBLIC};
use lablink_db::vms;
use lablink_testkit::docker::{docker, from_lib_sh, repo_root};
use lablink_testkit::{MASTER, TestDb, free_port, with_user};

/// (image, the stand-in CA bundle it was built with).
fn image() -> (String, PathBuf) {
    static IMAGE: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let built = match (
                std::env::var("LABLINK_TEST_HOLDER_IMAGE"),
                std::env::var("LABLINK_TEST_HOLDER_CA"),
            ) {
                (Ok(i), Ok(c)) if !i.is_empty() && !c.is_empty() => format!("{i} {c}"),
                _ => from_lib_sh("ensure_test_holder_image"),
            };
            let (image, ca) = built.split_once(' ').expect("IMAGE CA_BUNDLE");
            (image.to_owned(), PathBuf::from(ca))
        })
        .clone()
}

/// `docker` with `args`, its output whatever the outcome (for what may fail).
fn docker_output(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("run docker")
}

/// A container removed when the test ends, pass or fail; its log is shown on failure.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = docker_output(&["logs", &self.0]);
            eprintln!(
                "holder container log:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = docker_output(&["rm", "-f", &self.0]);
    }
}

#[test]
fn the_image_is_the_holder_for_linux_amd64_as_a_non_root_user_with_the_pinned_ca_bundle() {
    let (image, ca) = image();
    let inspect = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Os}}/{{.Architecture}} {{.Config.User}} {{json .Config.Entrypoint}}",
        &image,
    ]);
    assert_eq!(
        inspect,
        r#"linux/amd64 65532:65532 ["/usr/local/bin/lablink-holder"]"#
    );
    let env = docker(&["image", "inspect", "-f", "{{json .Config.Env}}", &image]);
    assert!(
        env.contains("PGSSLROOTCERT=/etc/lablink/rds-global-bundle.pem"),
        "{env}"
    );

    // The bundle in the image is byte for byte the one the build was given and pinned.
    let created = docker(&["create", &image]);
    let container = Container(created);
    let out = Command::new("docker")
        .args([
            "cp",
            &format!("{}:/etc/lablink/rds-global-bundle.pem", container.0),
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut archive = tar_first_file(&out.stdout);
    let mut in_image = Vec::new();
    archive.read_to_end(&mut in_image).unwrap();
    assert_eq!(in_image, std::fs::read(&ca).unwrap());
}

/// The first regular file of a tar archive (what `docker cp ... -` writes).
fn tar_first_file(tar: &[u8]) -> std::io::Cursor<Vec<u8>> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        let size_field = std::str::from_utf8(&header[124..136])
            .unwrap()
            .trim_matches(|c: char| c == '\0' || c == ' ');
        let size = usize::from_str_radix(size_field, 8).unwrap_or(0);
        let kind = header[156];
        let body = at + 512;
        if kind == b'0' || kind == 0 {
            return std::io::Cursor::new(tar[body..body + size].to_vec());
        }
        at = body + size.div_ceil(512) * 512;
    }
    panic!("no file in the archive docker cp wrote");
}

#[tokio::test]
async fn the_image_sets_up_an_empty_database_then_answers_healthz_and_holds_a_long_poll() {
    let (image, _) = image();
    let db = TestDb::empty().await;

    // The task's db-setup container: the master user, twice over (every task runs it).
    let master_url = with_user(&db.url, MASTER);
    for run in 0..2 {
        let out = docker_output(&[
            "run",
            "--rm",
            "--network",
            "host",
            "-e",
            &format!("DATABASE_URL={master_url}"),
            "-e",
            "PGSSLMODE=disable",
            &image,
            "setup-db",
        ]);
        assert!(
            out.status.success(),
            "setup-db run {run}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let app = db.config_as(APP).connect().await.unwrap();
    let host = Hostname::parse("image-0").unwrap();
    let secret = Secret::generate();
    vms::create_vms(
        &app,
        &[vms::NewVm {
            hostname: host.clone(),
            instance_id: None,
            credential_hash: Some(secret.hash()),
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await
    .unwrap();

    // The holder as lablink_app, on a port of its own on this machine's network.
    let port = free_port();
    let id = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "-e",
        &format!("DATABASE_URL={}", with_user(&db.url, APP)),
        "-e",
        "PGSSLMODE=disable",
        "-e",
        &format!("LABLINK_HOLDER_ADDR=127.0.0.1:{port}"),
        &image,
    ]);
    let _container = Container(id);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().as_u16() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the holder's /healthz did not answer 200 within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A wrong credential is refused at once: the image's holder checks the database.
    let refused = http
        .post(format!("{base}/vm_startup?wait=20"))
        .bearer_auth(Secret::generate().expose())
        .json(&serde_json::json!({ "hostname": host.to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);

    // The VM's long-poll is held ...
    let poll = {
        let (http, url, token, hostname) = (
            http.clone(),
            format!("{base}/vm_startup?wait=20"),
            secret.expose().to_owned(),
            host.to_string(),
        );
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "hostname": hostname }))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap(), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll was answered with nothing assigned"
    );

    // ... until a participant route's assignment (lablink_public) wakes it.
    let public = db.config_as(PUBLIC).connect().await.unwrap();
    let email = Email::parse("image@example.edu").unwrap();
    let cmd = CrdCommand::from_code("4/0AholderImageTest").unwrap();
    let pin = Pin::generate();
    let assigned_at = Instant::now();
    vms::assign(&public, &email, &cmd, &pin)
        .await
        .unwrap()
        .expect("the VM is free");
    let (status, body, answered_at) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the held poll is answered")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(pin.as_str()), "{body}");
    assert!(
        answered_at.duration_since(assigned_at) < Duration::from_secs(5),
        "woken by the assignment, not by the end of the wait"
    );
}

#[test]
fn the_build_refuses_a_ca_bundle_that_does_not_match_its_pin_or_holds_no_certificate() {
    let (_, ca) = image();
    let script = repo_root().join("scripts/build-holder-image");
    let run = |args: &[&str]| {
        Command::new(&script)
            .args(args)
            .current_dir(repo_root())
            .output()
            .unwrap()
    };
    let wrong = "0".repeat(64);
    let out = run(&[
        "--tag",
        "lablink-holder:refused",
        "--rds-ca",
        ca.to_str().unwrap(),
        "--rds-ca-sha256",
        &wrong,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("the pin is {wrong}")), "{stderr}");
    assert!(
        !stderr.contains("docker build"),
        "refused before building: {stderr}"
    );

    let empty = tempfile_with(b"not a certificate\n");
    let out = run(&[
        "--tag",
        "lablink-holder:refused",
        "--rds-ca",
        empty.to_str().unwrap(),
        "--rds-ca-sha256",
        &wrong,
    ]);
    let _ = std::fs::remove_file(&empty);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
    assert!(
        !docker_output(&["image", "inspect", "lablink-holder:refused"])
            .status
            .success(),
        "no image is tagged by a refused build"
    );
}

fn tempfile_with(bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "lablink-not-a-ca-{}-{:016x}.pem",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}
