//! `lablink-local`: the whole product on one machine, with one command.
//!
//! `cargo run --release -p lablink-local -- --port 8080 --vms 3` starts (or reuses) a
//! Postgres cluster under `--state-dir` (unless `DATABASE_URL` is set), applies the
//! migrations, serves every route's handler at its API Gateway path on `--port`
//! (`POST /vm_startup` is passed to the holder, as API Gateway does), runs the holder on
//! its own port, and runs launch/destroy jobs with the embedded job store and local VMs:
//! each VM is a real client-daemon process (this binary's `client-daemon` subcommand)
//! that enrolls, reports and ships its log like an EC2 VM, with a stand-in start-host
//! that records what it received. It prints the URLs and `ready`; Ctrl-C stops all.
//!
//! Subcommands: `hash-password` (stdin → argon2id PHC string), `session-key`, and
//! `client-daemon` (the daemon itself; its flags and `LABLINK_*` variables).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};
use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::{Db, DbConfig, fleet, vms};
use lablink_export::LocalStorage;
use lablink_ops::pg::PgJobStore;
use lablink_ops::{Job, JobId, JobKind, JobStore};
use lablink_provision::local::{LocalCompute, LocalSettings};
use lablink_provision::{ExportSettings, Exporter, Provisioner};
use lablink_web::auth::SessionKey;
use lablink_web::state::{AdminAuth, AdminSource};
use lablink_web::{AppConfig, AppState};

mod upload;

#[derive(Parser)]
#[command(name = "lablink-local", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Port of the API (every route, at its API Gateway path).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Port of the holder (default: --port + 1).
    #[arg(long)]
    holder_port: Option<u16>,
    /// Local VMs (client-daemon processes) to launch at start.
    #[arg(long, default_value_t = 0)]
    vms: u32,
    /// VM rows that are running and enrolled but have no process, for load tests; their
    /// hostnames and credentials go to `<state-dir>/vms.json`.
    #[arg(long, default_value_t = 0)]
    simulated_vms: u32,
    /// Where the Postgres cluster, the admin login and the VMs' files live.
    #[arg(long, default_value = "target/lablink-local")]
    state_dir: PathBuf,
    /// The fleet limit (as LABLINK_MAX_VMS on AWS).
    #[arg(long, default_value_t = 20)]
    max_vms: u32,
    /// Give each local VM a real workspace container from this client image, on this
    /// machine's Docker engine (as on EC2); start-host is then the image's, run as the
    /// desktop user. Without it, a stand-in start-host records what it gets.
    #[arg(long)]
    client_image: Option<String>,
    /// A git repository cloned onto the desktop user's Desktop in each workspace.
    #[arg(long, requires = "client_image")]
    tutorial_repo: Option<String>,
    /// The admin's startup script, run once in each workspace.
    #[arg(long, requires = "client_image")]
    startup_script: Option<PathBuf>,
    /// What a failing startup script does: continue or fail.
    #[arg(long, requires = "client_image", value_parser = ["continue", "fail"])]
    startup_on_error: Option<String>,
    /// The subject software whose process means the VM is in use (e.g. sleap).
    #[arg(long)]
    subject_software: Option<String>,
    /// The workspace's desktop user (default: client).
    #[arg(long, requires = "client_image")]
    desktop_user: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the argon2id hash of the password read from stdin (one line).
    HashPassword,
    /// Print a fresh random session key.
    SessionKey,
    /// Run the client daemon (what each local VM runs).
    ClientDaemon(Box<lablink_client_daemon::config::Args>),
    /// Check workshop settings files (config/examples/*.json) the way the deploy and
    /// the provisioner will: every field, the startup script's size, and the VM's
    /// user-data rendered and kept under EC2's 16 KB. Prints each file's deploy
    /// parameters; exits 1 naming the file and the field at the first problem.
    ValidateConfig {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() {
    // A local VM's workspace helper runs this binary in its container.
    lablink_client_daemon::helper::run_if_invoked();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                eprintln!("lablink-local: cannot read the password: {e}");
                std::process::exit(2);
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.len() < 12 {
                eprintln!("lablink-local: use a password of at least 12 characters");
                std::process::exit(2);
            }
            println!("{}", lablink_web::auth::hash_password(password));
        }
        Some(Command::SessionKey) => println!("{}", SessionKey::generate().to_hex()),
        Some(Command::ValidateConfig { files }) => {
            for f in &files {
                match validate_config(f) {
                    Ok(report) => println!("{report}"),
                    Err(e) => {
                        eprintln!("lablink-local: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
        Some(Command::ClientDaemon(args)) => {
            logging(false);
            let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
            std::process::exit(rt.block_on(lablink_client_daemon::cli::main(*args)));
        }
        None => {
            logging(true);
            let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
            if let Err(e) = rt.block_on(serve(cli)) {
                eprintln!("lablink-local: {e:#}");
                std::process::exit(1);
            }
        }
    }
}

fn logging(quiet_by_default: bool) {
    let default = if quiet_by_default {
        "warn,lablink_local=info"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// The admin login: from the environment, else generated once and kept in the state dir.
fn admin_login(state_dir: &Path) -> anyhow::Result<(String, String, bool)> {
    if let (Ok(u), Ok(p)) = (
        std::env::var("LABLINK_ADMIN_USER"),
        std::env::var("LABLINK_ADMIN_PASSWORD"),
    ) {
        return Ok((u, p, false));
    }
    let file = state_dir.join("admin.json");
    if let Ok(b) = std::fs::read(&file) {
        let v: serde_json::Value = serde_json::from_slice(&b).context("admin.json")?;
        if let (Some(u), Some(p)) = (v["user"].as_str(), v["password"].as_str()) {
            private(&file)?;
            return Ok((u.to_owned(), p.to_owned(), false));
        }
    }
    let password = Secret::generate().expose()[..20].to_owned();
    write_private(
        &file,
        serde_json::json!({ "user": "admin", "password": password })
            .to_string()
            .as_bytes(),
    )?;
    Ok(("admin".into(), password, true))
}

fn session_key(state_dir: &Path) -> anyhow::Result<SessionKey> {
    let file = state_dir.join("session.key");
    if let Ok(hex) = std::fs::read_to_string(&file)
        && let Ok(k) = SessionKey::from_hex(hex.trim())
    {
        // A key an earlier version wrote readable by everyone is made private.
        private(&file)?;
        return Ok(k);
    }
    let k = SessionKey::generate();
    write_private(&file, k.to_hex().as_bytes())?;
    Ok(k)
}

/// Write a secret readable by its owner only (0600 from its creation: never a moment
/// readable by others), replacing what was there.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    private(path)?;
    f.write_all(data)
}

fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// The database: `DATABASE_URL`, or a cluster kept under the state dir.
async fn database(state_dir: &Path) -> anyhow::Result<(DbConfig, Option<lablink_testkit::pg::Cluster>)> {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.trim().is_empty()
    {
        return Ok((DbConfig::from_url(&url)?, None));
    }
    let dir = state_dir.join("postgres");
    let cluster = tokio::task::spawn_blocking(move || lablink_testkit::pg::Cluster::start_in(&dir, false))
        .await?
        .context("start Postgres from the system's binaries")?;
    let admin = cluster.admin_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = 'lablink'", &[])
        .await?
        .is_some();
    if !exists {
        client.batch_execute("CREATE DATABASE lablink").await?;
    }
    drop(client);
    let _ = task.await;
    let url = lablink_testkit::with_dbname(&admin, "lablink");
    Ok((DbConfig::from_url(&url)?, Some(cluster)))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    // Before anything starts: without an engine no local VM could ever run.
    if let Some(image) = &cli.client_image {
        docker_engine(image).await?;
    }
    std::fs::create_dir_all(&cli.state_dir)?;
    let state_dir = cli.state_dir.canonicalize()?;
    let (db_config, cluster) = database(&state_dir).await?;
    let mut client = db_config.connect().await.context("connect to Postgres")?;
    lablink_db::migrate(&mut client).await?;
    // Local VMs were processes of an earlier run: they are gone.
    let cleared = fleet::clear_fleet(&client).await?;
    if cleared > 0 {
        tracing::info!(cleared, "forgot the VMs of the previous run");
    }

    let (user, password, generated) = admin_login(&state_dir)?;
    let key = session_key(&state_dir)?;
    let hash = tokio::task::spawn_blocking({
        let p = password.clone();
        move || lablink_web::auth::hash_password(&p)
    })
    .await?;
    let admin = AdminAuth::new(&user, &hash, key).map_err(anyhow::Error::msg)?;

    let api_addr = SocketAddr::from(([127, 0, 0, 1], cli.port));
    let holder_addr = SocketAddr::from(([127, 0, 0, 1], cli.holder_port.unwrap_or(cli.port + 1)));
    let holder = lablink_holder::start(lablink_holder::HolderConfig {
        db: db_config.clone().with_application_name("lablink-holder"),
        addr: holder_addr,
        default_wait: std::time::Duration::from_secs(25),
        max_wait: std::time::Duration::from_secs(900),
        legacy_vm_auth: false,
        heartbeat: std::time::Duration::from_secs(10),
        bootstrap_deadline: std::time::Duration::from_secs(20 * 60),
    })
    .await
    .with_context(|| format!("start the holder on {holder_addr}"))?;

    let db = Arc::new(Db::new(db_config.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<JobId>();
    let store: Arc<dyn JobStore> = Arc::new(PgJobStore::new(Arc::clone(&db)).with_insert_channel(tx.clone()));
    let api_url = format!("http://{api_addr}");
    let mut extra_env: Vec<(String, String)> = vec![("RUST_LOG".into(), "info".into())];
    if let Some(script) = &cli.startup_script {
        // The daemons run from elsewhere: give them a path that does not depend on it.
        let script = script
            .canonicalize()
            .with_context(|| format!("--startup-script {}", script.display()))?;
        extra_env.push(("LABLINK_STARTUP_SCRIPT".into(), script.display().to_string()));
    }
    for (var, value) in [
        ("LABLINK_TUTORIAL_REPO", &cli.tutorial_repo),
        ("LABLINK_STARTUP_ON_ERROR", &cli.startup_on_error),
        ("LABLINK_SUBJECT_SOFTWARE", &cli.subject_software),
        ("LABLINK_DESKTOP_USER", &cli.desktop_user),
    ] {
        if let Some(v) = value {
            extra_env.push((var.into(), v.clone()));
        }
    }
    let compute = Arc::new(LocalCompute::new(LocalSettings {
        daemon_bin: std::env::current_exe()?,
        daemon_args: vec!["client-daemon".into()],
        api_url: api_url.clone(),
        holder_url: format!("http://{}", holder.addr),
        state_dir: state_dir.join("vms"),
        extra_env,
        client_image: cli.client_image.clone(),
    }));
    let stale = compute.remove_stale_workspaces().await;
    if stale > 0 {
        tracing::info!(stale, "removed the workspace containers of an earlier run");
    }
    // Data exports: VM archives and zips under the state dir, uploaded through this
    // server's own signed upload URLs.
    let mut upload_key = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut upload_key);
    let export_storage = Arc::new(LocalStorage {
        dir: state_dir.clone(),
        base_url: api_url.clone(),
        key: upload_key,
    });
    let export_settings = {
        let mut s = lablink_core::config::Settings::from_env();
        let e = ExportSettings::read(&mut s);
        s.finish(|| e).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let provisioner = Arc::new(Provisioner {
        store: Arc::clone(&store),
        compute: compute.clone(),
        db: Arc::clone(&db),
        hostname_prefix: "local".into(),
        exports: Some(Exporter {
            storage: export_storage.clone(),
            settings: export_settings,
        }),
    });
    // The stream's stand-in: every inserted job, and any left unfinished by a previous run.
    for j in store.recent(100).await? {
        if !j.state.is_finished() {
            let _ = tx.send(j.id);
        }
    }
    tokio::spawn({
        let p = Arc::clone(&provisioner);
        async move {
            while let Some(id) = rx.recv().await {
                match p.process(&id).await {
                    Ok(outcome) => tracing::info!(job = %id, ?outcome, "job processed"),
                    Err(e) => tracing::error!(job = %id, error = %e, "job interrupted"),
                }
            }
        }
    });

    // The settings a deployment gives its functions, from the same variables: the
    // workshop gate's defaults (LABLINK_WORKSHOP_*, LABLINK_SEATS_*), the admin allowlist
    // (LABLINK_ADMIN_ALLOWED_CIDRS), the fleet's default life and notice
    // (LABLINK_FLEET_HOURS, LABLINK_FLEET_NOTICE_SECONDS), and the end-time check's
    // period, the stand-in of AWS's EventBridge minute (LABLINK_FLEET_TICK_SECONDS,
    // default 30, so tests can compress it).
    let (gate, admin_cidrs, fleet_hours, fleet_notice, tick_every) = {
        let mut s = lablink_core::config::Settings::from_env();
        let gate = lablink_core::workshop::Gate::read(&mut s);
        let cidrs = s.optional_with(
            "LABLINK_ADMIN_ALLOWED_CIDRS",
            "comma-separated address ranges, e.g. 127.0.0.1/32",
            lablink_core::cidr::CidrList::parse,
        );
        let hours = s.ranged("LABLINK_FLEET_HOURS", 12u32, 1, 168);
        let notice = s.ranged("LABLINK_FLEET_NOTICE_SECONDS", 900i64, 1, 86_400);
        let tick = s.ranged("LABLINK_FLEET_TICK_SECONDS", 30u64, 1, 3600);
        s.finish(|| {
            (
                gate,
                cidrs,
                hours,
                chrono::Duration::seconds(notice),
                std::time::Duration::from_secs(tick),
            )
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?
    };
    tokio::spawn({
        let (store, db) = (Arc::clone(&store), Arc::clone(&db));
        async move {
            let mut every = tokio::time::interval(tick_every);
            loop {
                every.tick().await;
                match lablink_provision::schedule::tick(store.as_ref(), &db, chrono::Utc::now()).await {
                    Ok(t @ lablink_provision::schedule::Tick::Submitted(_)) => {
                        tracing::warn!(tick = ?t, "fleet end")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "the fleet's end-time check failed"),
                }
            }
        }
    });

    let config = AppConfig {
        gate,
        fleet_hours,
        fleet_notice,
        admin_cidrs,
        admin_secret_ttl: std::time::Duration::from_secs(60),
        db: db_config.clone(),
        legacy_vm_auth: false,
        paused: false,
        admin: AdminSource::Env(Arc::new(admin)),
        forwarder_token_hash: None,
        jobs_table: None,
        max_vms: cli.max_vms,
        deployment: lablink_core::domain::DeploymentName::parse("local").expect("a valid name"),
        export_bucket: None,
        // What the launch form lists: this runner's own VM settings.
        vm: lablink_core::vm_settings::VmSettings {
            instance_type: "local".into(),
            client_image: cli
                .client_image
                .clone()
                .unwrap_or_else(|| "none (a stand-in start-host on this machine)".into()),
            tutorial_repo: cli.tutorial_repo.clone(),
            subject_software: cli.subject_software.clone(),
            startup_script: cli
                .startup_script
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok()),
            startup_on_error: match cli.startup_on_error.as_deref() {
                Some("fail") => lablink_core::vm_settings::OnError::Fail,
                _ => lablink_core::vm_settings::OnError::Continue,
            },
            desktop_user: cli.desktop_user.clone().unwrap_or_else(|| "client".into()),
            disk_gb: 100,
        },
    };
    let state = Arc::new(
        AppState::new(config)
            .with_local_jobs(
                Arc::clone(&store),
                "local VMs (client-daemon processes on this machine)",
            )
            .with_export_storage(export_storage.clone()),
    );
    // The VMs' long-polls go to the holder, as behind API Gateway.
    let app = lablink_web::local::with_holder(
        lablink_web::local::router(state),
        &format!("http://{}", holder.addr),
    )
    .route(
        "/local-export/{job}/{host}",
        axum::routing::put({
            let storage = export_storage.clone();
            move |path, query, headers, body| {
                upload::put_archive(Arc::clone(&storage), path, query, headers, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("listen on {api_addr}"))?;

    if cli.simulated_vms > 0 {
        simulate(&client, &state_dir, cli.simulated_vms).await?;
    }
    if cli.vms > 0 {
        let job = Job::new(
            JobId::generate(Utc::now()),
            JobKind::Launch { num_vms: cli.vms },
            "lablink-local",
            Utc::now(),
        );
        lablink_ops::submit(store.as_ref(), job, Utc::now()).await?;
    }

    println!("LabLink is running locally.");
    println!("  participant page: {api_url}/");
    println!("  admin console:    {api_url}/admin   (user {user}, password {password})");
    if generated {
        println!(
            "  (the admin password was generated; it is kept in {})",
            state_dir.join("admin.json").display()
        );
    }
    println!("  holder:           http://{}", holder.addr);
    println!("  state:            {}", state_dir.display());
    println!("ready");

    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    server.await?;
    println!("stopping");
    compute.shutdown().await;
    let _ = holder.shutdown().await;
    if let Some(c) = cluster {
        let _ = tokio::task::spawn_blocking(move || c.stop()).await;
    }
    Ok(())
}

/// One settings file checked; its deploy parameters (`sam deploy --parameter-overrides`).
fn validate_config(path: &Path) -> Result<String, String> {
    use base64::Engine;
    use lablink_provision::bootstrap::{Bootstrap, DaemonArtifact, load_workshop_file};
    let vm = load_workshop_file(path)?;
    // The user-data the provisioner would make, with the largest values of what it adds.
    let job = JobId::generate(Utc::now());
    let daemon = DaemonArtifact {
        bucket: "cdk-hnb659fds-assets-123456789012-ap-southeast-2".into(),
        key: format!("{}.bin", "0".repeat(64)),
        sha256: "0".repeat(64),
        region: "ap-southeast-2".into(),
    };
    let user_data = Bootstrap {
        job: &job,
        api_url: "https://abcdefghij.execute-api.ap-southeast-2.amazonaws.com",
        log_group: "lablink-cloud-init-a-long-deployment-name",
        enrollment_secret: &"x".repeat(64),
        daemon: &daemon,
        vm: &vm,
    }
    .user_data()
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let script = vm
        .startup_script
        .as_deref()
        .map(|s| base64::engine::general_purpose::STANDARD.encode(s))
        .unwrap_or_default();
    // The stack's StartupScriptB64 parameter: CloudFormation and the provisioner's
    // environment (4 KB in all) bound it well below what user-data could carry.
    const DEPLOY_SCRIPT_B64_MAX: usize = 1400;
    if script.len() > DEPLOY_SCRIPT_B64_MAX {
        return Err(format!(
            "{}: startup_script_file: {} base64 characters; the deploy parameter StartupScriptB64 takes at most {DEPLOY_SCRIPT_B64_MAX} (about 1 KB of script): move the rest into the client image or the tutorial repository",
            path.display(),
            script.len()
        ));
    }
    Ok(format!(
        "{}: ok (user-data {} of {} bytes)\n  InstanceType={} ClientImage={} TutorialRepo={} SubjectSoftware={} StartupScriptB64={} StartupOnError={} DesktopUser={} VmDiskGb={}",
        path.display(),
        user_data.len(),
        lablink_provision::bootstrap::USER_DATA_LIMIT,
        vm.instance_type,
        vm.client_image,
        vm.tutorial_repo.as_deref().unwrap_or(""),
        vm.subject_software.as_deref().unwrap_or(""),
        if script.len() > 40 {
            format!("<{} base64 characters>", script.len())
        } else {
            script
        },
        vm.startup_on_error.as_str(),
        vm.desktop_user,
        vm.disk_gb,
    ))
}

/// `--client-image` needs a Docker engine: a one-line error saying how to start one
/// when none answers.
async fn docker_engine(image: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            let why = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no answer");
            anyhow::bail!(
                "--client-image {image} needs a Docker engine and none answers ({why}); start one with `sudo systemctl start docker` (or `sudo dockerd &`)"
            )
        }
        Err(e) => anyhow::bail!(
            "--client-image {image} needs Docker, and the docker command cannot run ({e}); install it (Debian: `sudo apt-get install docker.io`) and start the engine with `sudo systemctl start docker`"
        ),
    }
}

/// VM rows that are running and enrolled, with no process behind them.
async fn simulate(client: &tokio_postgres::Client, state_dir: &Path, n: u32) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for i in 1..=n {
        let hostname = Hostname::parse(&format!("sim-vm-{i:05}")).map_err(anyhow::Error::msg)?;
        let secret = Secret::generate();
        out.push(serde_json::json!({ "hostname": hostname.as_str(), "credential": secret.expose() }));
        rows.push(vms::NewVm {
            hostname,
            instance_id: None,
            credential_hash: Some(secret.hash()),
            status: VmStatus::Running,
            provision: None,
        });
    }
    for chunk in rows.chunks(1000) {
        vms::create_vms(client, chunk).await?;
    }
    let file = state_dir.join("vms.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&out)?)?;
    tracing::info!(n, file = %file.display(), "simulated VMs created");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_local_secrets_are_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = super::session_key(dir.path()).unwrap();
        let file = dir.path().join("session.key");
        assert_eq!(mode(&file), 0o600);
        // One left readable by an earlier version is tightened, and still used.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(super::session_key(dir.path()).unwrap().to_hex(), key.to_hex());
        assert_eq!(mode(&file), 0o600);
        let other = dir.path().join("admin.json");
        std::fs::write(&other, b"old").unwrap();
        super::write_private(&other, b"{}").unwrap();
        assert_eq!(
            (mode(&other), std::fs::read(&other).unwrap()),
            (0o600, b"{}".to_vec())
        );
    }
}
