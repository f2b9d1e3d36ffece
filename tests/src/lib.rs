//! Real processes for end-to-end tests and benchmarks: the holder and client-daemon
//! binaries (built next to the test or bench binary), the routes on a real HTTP server,
//! and helpers to make VMs with credentials. Every child is killed when its handle drops.

pub mod runtime_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::{DbConfig, vms};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A workspace binary: next to the running executable (`target/<profile>/`), or one
/// level up from a test binary in `target/<profile>/deps/`.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} is not built next to {} (scripts/test builds every binary first)",
        exe.display()
    )
}

/// VMs with their secrets, as the provisioner would make them.
pub struct TestVm {
    pub hostname: Hostname,
    pub secret: Secret,
}

pub async fn create_vms(
    client: &tokio_postgres::Client,
    prefix: &str,
    n: usize,
    status: VmStatus,
) -> anyhow::Result<Vec<TestVm>> {
    let made: Vec<TestVm> = (0..n)
        .map(|i| TestVm {
            hostname: Hostname::parse(&format!("{prefix}-{i}")).expect("valid test hostname"),
            secret: Secret::generate(),
        })
        .collect();
    for chunk in made.chunks(1000) {
        let new: Vec<vms::NewVm> = chunk
            .iter()
            .map(|v| vms::NewVm {
                hostname: v.hostname.clone(),
                instance_id: None,
                credential_hash: Some(v.secret.hash()),
                status,
                provision: None,
            })
            .collect();
        vms::create_vms(client, &new).await?;
    }
    Ok(made)
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM; waits up to `within` for the exit, then kills.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                self.kill().await;
                None
            }
        }
    }
}

/// A running `lablink-holder` process.
pub struct HolderProc {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl HolderProc {
    /// Start on `addr` (port 0: any free port) against `db_url`.
    pub async fn start(db_url: &str, addr: SocketAddr, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_bin(&workspace_bin("lablink-holder")?, db_url, addr, env).await
    }

    pub async fn start_bin(
        bin: &Path,
        db_url: &str,
        addr: SocketAddr,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("PGSSLMODE", "disable")
            .env("LABLINK_HOLDER_ADDR", addr.to_string())
            .env(
                "RUST_LOG",
                std::env::var("HOLDER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = async {
            loop {
                match lines.next_line().await? {
                    Some(l) if l.contains("listening on") => return Ok(l),
                    Some(_) => continue,
                    None => bail!("the holder exited before listening"),
                }
            }
        };
        let line = tokio::time::timeout(Duration::from_secs(20), first)
            .await
            .context("the holder did not say where it listens within 20 s")??;
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from the holder: {line:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            proc: Proc { child },
            addr,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /healthz` as JSON (any status).
    pub async fn health(&self, http: &reqwest::Client) -> anyhow::Result<serde_json::Value> {
        Ok(http
            .get(format!("{}/healthz", self.url()))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Wait until the holder listens and has exactly `n` waiters.
    pub async fn wait_for_waiters(
        &self,
        http: &reqwest::Client,
        n: u64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            if let Ok(h) = self.health(http).await {
                if h["listener"] == "listening" && h["waiters"] == n {
                    return Ok(());
                }
                last = h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("the holder did not reach {n} waiters within {within:?}; last health: {last}")
    }
}

/// Every route on a real HTTP server in this process (as the local runner mounts them).
pub struct ApiServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    pub async fn start(db: &DbConfig) -> anyhow::Result<Self> {
        Self::start_at(db, "127.0.0.1", None).await
    }

    /// On `host` (any free port), with the VMs' long-polls passed to the holder at
    /// `holder` when given (one URL for both, as behind API Gateway).
    pub async fn start_at(db: &DbConfig, host: &str, holder: Option<&str>) -> anyhow::Result<Self> {
        let mut s = lablink_core::config::Settings::from_pairs(&[("DATABASE_URL", "postgres://unused")]);
        let mut config = lablink_web::AppConfig::read(&mut s).context("app settings")?;
        config.db = db.clone();
        let state = Arc::new(lablink_web::AppState::new(config));
        let listener = tokio::net::TcpListener::bind((host, 0)).await?;
        let addr = listener.local_addr()?;
        let mut app = lablink_web::local::router(state);
        if let Some(h) = holder {
            app = lablink_web::local::with_holder(app, h);
        }
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `f` every 20 ms until it yields `Some`, or fail after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f().await {
            return Ok(t);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cargo target dir this executable was built in (`<target>/<profile>/[deps/]exe`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "debug" || n == "release"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not in a cargo target dir", exe.display()))
}

/// The repository root (for `events/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cargo-lambda artifacts must have been built by this run: `scripts/test` builds
/// them (`scripts/build-lambdas`) and sets `LABLINK_LAMBDA_ARTIFACTS=1`. Without that the
/// test fails, saying so: it never passes without looking at them (an artifact left by
/// an earlier build is not this code's).
pub fn require_lambda_artifacts() {
    assert_eq!(
        std::env::var("LABLINK_LAMBDA_ARTIFACTS").as_deref(),
        Ok("1"),
        "the cargo-lambda artifacts of this code are not built: run scripts/test (it runs \
         scripts/build-lambdas and sets LABLINK_LAMBDA_ARTIFACTS=1), or build them yourself \
         and set LABLINK_LAMBDA_ARTIFACTS=1"
    );
}

/// The artifact of `cargo lambda build` (scripts/build-lambdas) for `function`.
pub fn lambda_artifact(function: &str) -> anyhow::Result<PathBuf> {
    Ok(target_dir()?.join("lambda").join(function).join("bootstrap"))
}

/// The AWS service clients a built binary links, told by the FIPS endpoint prefix that
/// only that client's endpoint resolver carries (`"https://<service>-fips."`; every
/// client built links its resolver). A route's binary links only what its handler
/// reaches (the linker drops the rest), so this is what its Lambda can call.
pub fn aws_clients_linked(bin: &Path) -> std::io::Result<Vec<&'static str>> {
    const MARKERS: [(&str, &str); 6] = [
        ("DynamoDB", "https://dynamodb-fips."),
        ("S3", "https://s3-fips."),
        ("STS", "https://sts-fips."),
        ("Secrets Manager", "https://secretsmanager-fips."),
        ("EC2", "https://ec2-fips."),
        ("CloudWatch Logs", "https://logs-fips."),
    ];
    let bytes = std::fs::read(bin)?;
    let has = |needle: &str| memchr::memmem::find(&bytes, needle.as_bytes()).is_some();
    Ok(MARKERS
        .iter()
        .filter(|(_, marker)| has(marker))
        .map(|(name, _)| *name)
        .collect())
}

/// The workspace tests' client image (CI's build of `client-image/` with the CRD 148
/// stand-ins of `tests/crd-standin` and the hook `tests/client-image/hook.sh`), on a running Docker
/// engine: `scripts/test` builds it and exports `LABLINK_TEST_CLIENT_IMAGE`; a bare
/// `cargo test` builds it here with the same script function (the engine is started
/// and the image built when missing, as for Postgres).
pub fn test_client_image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            if let Ok(i) = std::env::var("LABLINK_TEST_CLIENT_IMAGE")
                && !i.is_empty()
            {
                return i;
            }
            lablink_testkit::docker::from_lib_sh("ensure_test_client_image")
        })
        .clone()
}

pub use lablink_testkit::docker::docker;

/// A git repository served by `git daemon` on loopback (the containers use the host's
/// network): `git://127.0.0.1:<port>/tutorial.git` with one file.
pub async fn git_daemon(dir: &Path) -> (Proc, String) {
    git_daemon_on(dir, "127.0.0.1").await
}

/// [`git_daemon`] listening on `host` (the boot rehearsal's VM reaches the Docker bridge's
/// gateway).
pub async fn git_daemon_on(dir: &Path, host: &str) -> (Proc, String) {
    let work = dir.join("tutorial-src");
    let base = dir.join("git");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(work.join("README.md"), "# SLEAP tutorial data\n").unwrap();
    let git = |args: &[&str], cwd: &Path| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"], &work);
    git(&["add", "README.md"], &work);
    git(&["commit", "-q", "-m", "tutorial"], &work);
    git(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            base.join("tutorial.git").to_str().unwrap(),
        ],
        dir,
    );
    let port = free_port();
    // `git-daemon` itself: `git daemon` runs it as a child that outlives a kill of `git`
    // (and holds the test's stdout open).
    let exec_path = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let exec_path = String::from_utf8_lossy(&exec_path.stdout).trim().to_owned();
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg(format!("--listen={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(&base)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("git daemon");
    let url = format!("git://{host}:{port}/tutorial.git");
    // Serving once it answers.
    eventually("git daemon", Duration::from_secs(10), || async {
        std::net::TcpStream::connect((host, port)).ok().map(|_| ())
    })
    .await
    .unwrap();
    (Proc { child }, url)
}

pub use lablink_testkit::free_port;

/// The local runner (`lablink-local`), started as a person starts it, on free ports.
pub struct LocalStack {
    child: Child,
    pub url: String,
    pub state_dir: PathBuf,
}

impl LocalStack {
    /// Start it with `vms` local VMs and the given admin, and wait for its `ready` line.
    pub async fn start(
        db_url: &str,
        state_dir: &Path,
        vms: u32,
        admin: (&str, &str),
    ) -> anyhow::Result<Self> {
        Self::start_with(db_url, state_dir, vms, admin, &[]).await
    }

    /// [`LocalStack::start`] with extra environment (`LABLINK_EXPORT_*` settings).
    pub async fn start_with(
        db_url: &str,
        state_dir: &Path,
        vms: u32,
        admin: (&str, &str),
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_full(db_url, state_dir, vms, admin, env, &[]).await
    }

    /// [`LocalStack::start_with`] with extra flags (`--client-image ...`).
    pub async fn start_full(
        db_url: &str,
        state_dir: &Path,
        vms: u32,
        admin: (&str, &str),
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let (port, holder_port) = (free_port(), free_port());
        let mut child = Command::new(workspace_bin("lablink-local")?)
            .args(args)
            .args(["--port", &port.to_string()])
            .args(["--holder-port", &holder_port.to_string()])
            .args(["--vms", &vms.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .env("DATABASE_URL", db_url)
            .env("LABLINK_ADMIN_USER", admin.0)
            .env("LABLINK_ADMIN_PASSWORD", admin.1)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await? {
                if l == "ready" {
                    return Ok(());
                }
            }
            bail!("lablink-local exited before printing ready")
        })
        .await
        .context("lablink-local did not print ready within 60 s")??;
        // Keep draining stdout so the runner never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            state_dir: state_dir.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the local VMs' stand-in start-host recorded.
    pub fn start_host_logs(&self) -> String {
        std::fs::read_dir(self.state_dir.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("start-host.log")).ok())
            .collect()
    }

    /// Wait until the runner has `n` free (running, unassigned) VMs.
    pub async fn wait_for_free_vms(&self, n: u64, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/api/unassigned_vms_count", self.url);
        eventually(&format!("{n} free VMs"), within, || async {
            let v: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            (v["count"] == n).then_some(())
        })
        .await
    }

    /// The local VMs: (hostname, its state dir), once enrolled.
    pub fn vms(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(self.state_dir.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                // The daemon's enrollment record (client-daemon/src/enroll.rs).
                let record = std::fs::read_to_string(e.path().join("enrollment.json")).ok()?;
                let v: serde_json::Value = serde_json::from_str(&record).ok()?;
                Some((v["hostname"].as_str()?.to_owned(), e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// Kill the client daemon whose state dir is `dir` (as a crashed or stopped daemon).
    pub fn kill_daemon(&self, dir: &Path) -> anyhow::Result<()> {
        let needle = format!("LABLINK_STATE_DIR={}", dir.display());
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                // SAFETY: signalling a process this test's runner started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Ok(());
            }
        }
        bail!("no daemon runs with {needle}")
    }

    /// SIGKILL, as a crash: nothing gets to clean up.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Ctrl-C, as a person stops it; its exit status.
    pub async fn interrupt(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("already exited")? as i32;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        Ok(tokio::time::timeout(within, self.child.wait()).await??)
    }
}

/// A zip read back by Python's `zipfile` and checked by `unzip -t` (two independent
/// readers): its names, the first
/// entry with a bad CRC (`testzip()`, null when all are good), each entry's size, and the
/// text of `manifest.csv`.
pub fn read_zip(zip: &Path) -> anyhow::Result<serde_json::Value> {
    let script = r#"
import json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
print(json.dumps({"names": z.namelist(), "bad": z.testzip(),
                  "manifest": z.read("manifest.csv").decode(),
                  "sizes": {i.filename: i.file_size for i in z.infolist()}}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(zip)
        .output()?;
    if !out.status.success() {
        bail!(
            "zipfile cannot read {}: {}",
            zip.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
