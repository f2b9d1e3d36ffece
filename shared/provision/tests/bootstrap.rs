//! The VM's user-data, checked by cloud-init's own schema validator (Debian's
//! `cloud-init` package: `cloud-init schema --config-file`, installed by `scripts/test`)
//! for every shipped example and edge settings, read back by a YAML parser to the very
//! structure we meant, and kept under EC2's 16 KB. The bootstrap script it runs is
//! executed for real: the daemon fetched from a local HTTP server standing in for S3
//! (through a stand-in `aws s3 cp`), checked against its SHA-256, and started only when
//! it matches (a stand-in `systemctl` records what it was asked).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lablink_ops::JobId;
use lablink_provision::bootstrap::{
    BOOTSTRAP_SCRIPT, Bootstrap, DaemonArtifact, MAX_STARTUP_SCRIPT_BYTES, OnError, USER_DATA_LIMIT,
    VmSettings, load_workshop_file,
};
use sha2::Digest;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn daemon() -> DaemonArtifact {
    DaemonArtifact {
        bucket: "cdk-hnb659fds-assets-123456789012-us-west-2".into(),
        key: "5f1c0a.bin".into(),
        sha256: "0123456789abcdef".repeat(4),
        region: "us-west-2".into(),
    }
}

/// `cloud-init schema` on `text`: Ok, or its complaint.
fn cloud_init_schema(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run cloud-init ({e}): scripts/test installs Debian's cloud-init package (apt-get install cloud-init)")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.contains("Valid") {
        Ok(())
    } else {
        Err(said)
    }
}

/// The YAML read back by PyYAML (what cloud-init itself parses with), as JSON.
fn yaml_as_json(text: &str) -> serde_json::Value {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("Debian's python3 with yaml (cloud-init's dependency)");
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_example_and_edge_setting_renders_a_valid_cloud_config_under_16_kb() {
    let dir = tempfile::tempdir().unwrap();
    let job = JobId::parse("20261202T030000Z-0a1b2c3d").unwrap();
    let d = daemon();
    let mut cases: Vec<(String, VmSettings)> = Vec::new();
    for entry in std::fs::read_dir(repo().join("config/examples")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let vm = load_workshop_file(&p).unwrap_or_else(|e| panic!("{e}"));
            cases.push((p.file_name().unwrap().to_string_lossy().into_owned(), vm));
        }
    }
    assert!(cases.len() >= 2, "the shipped examples: {cases:?}");
    // The largest allowed startup script, full of YAML's and the shell's special characters.
    let hostile = "#!/bin/sh\necho 'a: b' \"- [c]\" {d} #e & | > $HOME `id` \\\\ \t\u{e9}\n";
    let mut big = String::new();
    while big.len() + hostile.len() <= MAX_STARTUP_SCRIPT_BYTES {
        big.push_str(hostile);
    }
    cases.push((
        "largest-script".into(),
        VmSettings {
            startup_script: Some(big),
            startup_on_error: OnError::Fail,
            tutorial_repo: Some("git@github.com:org/private-tutorial.git".into()),
            subject_software: Some("sleap-label".into()),
            ..VmSettings::default()
        },
    ));
    cases.push((
        "bare".into(),
        VmSettings {
            subject_software: None,
            ..VmSettings::default()
        },
    ));
    for (name, vm) in &cases {
        let b = Bootstrap {
            job: &job,
            api_url: "https://abc123.execute-api.us-west-2.amazonaws.com",
            log_group: "lablink-cloud-init-prod",
            enrollment_secret: "enroll-s3cret-value",
            daemon: &d,
            vm,
        };
        let text = b.user_data().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.len() <= USER_DATA_LIMIT, "{name}: {} bytes", text.len());
        cloud_init_schema(dir.path(), name, &text)
            .unwrap_or_else(|e| panic!("{name}: cloud-init schema: {e}\n{text}"));
        assert_eq!(
            yaml_as_json(&text),
            b.config().unwrap(),
            "{name}: the YAML says what we meant"
        );
        // The secret: in the root-only env file only, never on a command line.
        let config = b.config().unwrap();
        let holders: Vec<&str> = config["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["content"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("enroll-s3cret-value")
            })
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert_eq!(holders, ["/etc/lablink/client.env"], "{name}");
        assert!(!config["runcmd"].to_string().contains("s3cret"), "{name}");
        let env = &config["write_files"][0];
        assert_eq!(
            (env["permissions"].as_str(), env["owner"].as_str()),
            (Some("0600"), Some("root:root"))
        );
        if let Some(script) = &vm.startup_script {
            let f = config["write_files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == "/etc/lablink/startup-script")
                .unwrap();
            use base64::Engine;
            let back = base64::engine::general_purpose::STANDARD
                .decode(f["content"].as_str().unwrap())
                .unwrap();
            assert_eq!(
                &back,
                script.as_bytes(),
                "{name}: the script arrives byte for byte"
            );
        }
    }
    // And cloud-init's validator does refuse a broken config (the check can fail).
    let broken = "#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 0600\n    bogus_key: 1\n";
    assert!(cloud_init_schema(dir.path(), "broken", broken).is_err());
}

/// Write an executable script.
fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct S3StandIn {
    child: std::process::Child,
    url: String,
}

impl Drop for S3StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP server over `root` (`python3 -m http.server`), as S3's stand-in.
fn s3_stand_in(root: &Path) -> S3StandIn {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "--directory",
        ])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    S3StandIn {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Run the bootstrap script with the stand-ins on PATH; (exit ok, stderr).
fn run_bootstrap(dir: &Path, s3: &str, sha256: &str) -> (bool, String) {
    let env = dir.join("bootstrap.env");
    std::fs::write(
        &env,
        format!(
            "LABLINK_DAEMON_BUCKET=assets-bucket\nLABLINK_DAEMON_KEY=daemon.bin\nLABLINK_DAEMON_SHA256={sha256}\nLABLINK_AWS_REGION=us-west-2\n"
        ),
    )
    .unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // `aws s3 cp [options] s3://BUCKET/KEY DEST`, answered from the local server.
    script(
        &bin,
        "aws",
        "#!/bin/sh\n[ \"$1 $2\" = \"s3 cp\" ] || { echo \"unexpected: aws $*\" >&2; exit 2; }\nshift 2\nwhile [ $# -gt 2 ]; do shift; done\nexec curl -fsS -o \"$2\" \"$LABLINK_TEST_S3/${1#s3://}\"\n",
    );
    script(
        &bin,
        "systemctl",
        "#!/bin/sh\necho \"$*\" >> \"$LABLINK_TEST_SYSTEMCTL\"\n",
    );
    let boot = dir.join("lablink-bootstrap");
    script(dir, "lablink-bootstrap", BOOTSTRAP_SCRIPT);
    let out = Command::new("sh")
        .arg(&boot)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("LABLINK_BOOTSTRAP_ENV", &env)
        // No daemon settings here: a failure is not reported (the rehearsal reports).
        .env("LABLINK_CLIENT_ENV", dir.join("no-client.env"))
        .env("LABLINK_DOCKER_DAEMON_JSON", dir.join("daemon.json"))
        .env("LABLINK_SYSTEMD_DIR", dir)
        .env("LABLINK_DAEMON_PATH", dir.join("installed-daemon"))
        .env("LABLINK_TEST_S3", s3)
        .env("LABLINK_TEST_SYSTEMCTL", dir.join("systemctl.log"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_bootstrap_starts_the_daemon_only_when_its_sha256_matches() {
    let root = tempfile::tempdir().unwrap();
    let body = b"\x7fELF stand-in client daemon".repeat(1000);
    std::fs::create_dir_all(root.path().join("assets-bucket")).unwrap();
    std::fs::write(root.path().join("assets-bucket/daemon.bin"), &body).unwrap();
    let s3 = s3_stand_in(root.path());
    let right = hex::encode(sha2::Sha256::digest(&body));

    let ok = tempfile::tempdir().unwrap();
    // The image's Docker settings (the DLAMI's name the NVIDIA runtime): kept, with the
    // cgroup driver set to cgroupfs (NVIDIA's advice against daemon-reload losing GPUs).
    std::fs::write(
        ok.path().join("daemon.json"),
        r#"{"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}, "exec-opts": ["native.cgroupdriver=systemd"]}"#,
    )
    .unwrap();
    let (success, stderr) = run_bootstrap(ok.path(), &s3.url, &right);
    assert!(success, "{stderr}");
    assert!(stderr.contains("client daemon verified and started"), "{stderr}");
    let installed = ok.path().join("installed-daemon");
    assert_eq!(std::fs::read(&installed).unwrap(), body);
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_to_string(ok.path().join("systemctl.log")).unwrap(),
        "daemon-reload\nenable --now lablink-imds-guard.service\nrestart docker.service\nenable --now lablink-client.service\n",
        "the metadata guard first, Docker restarted once for its new cgroup driver, then the daemon"
    );
    let guard = std::fs::read_to_string(ok.path().join("lablink-imds-guard.service")).unwrap();
    assert!(
        guard.contains("-d 169.254.169.254/32 -p tcp -m owner ! --uid-owner 0 -j REJECT")
            && guard.contains("Before=network-pre.target docker.service lablink-client.service"),
        "{guard}"
    );
    let docker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ok.path().join("daemon.json")).unwrap()).unwrap();
    assert_eq!(
        docker,
        serde_json::json!({
            "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
            "exec-opts": ["native.cgroupdriver=cgroupfs"]
        })
    );

    let bad = tempfile::tempdir().unwrap();
    let wrong = "f".repeat(64);
    let (success, stderr) = run_bootstrap(bad.path(), &s3.url, &wrong);
    assert!(!success);
    assert!(
        stderr.contains(&format!(
            "the client daemon's SHA-256 is {right}, expected {wrong}: refusing to run it"
        )),
        "{stderr}"
    );
    assert!(!bad.path().join("installed-daemon").exists(), "nothing installed");
    assert!(
        !bad.path().join("installed-daemon.download").exists(),
        "the download is removed"
    );
    assert!(
        !std::fs::read_to_string(bad.path().join("systemctl.log"))
            .unwrap_or_default()
            .contains("lablink-client"),
        "the daemon was not started"
    );
}
