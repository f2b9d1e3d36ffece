//! A `moto_server` (PyPI `moto[server]`, from the project's venv) on a free loopback
//! port, started once per test process and stopped when that process exits. AWS SDK
//! clients reach it through [`sdk_config`] (endpoint override, test credentials).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the venv's `moto_server` is: `LABLINK_MOTO_SERVER`, else
/// `$LABLINK_VENV/bin/moto_server`, else `~/.cache/lablink-venv/bin/moto_server` (what
/// `scripts/lib.sh ensure_venv` makes).
pub fn moto_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("LABLINK_MOTO_SERVER") {
        return p.into();
    }
    let venv = std::env::var("LABLINK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/lablink-venv")
        });
    venv.join("bin/moto_server")
}

/// The endpoint of this process's moto server (started on first use).
pub fn endpoint() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        start("127.0.0.1")
            .unwrap_or_else(|e| panic!("cannot start moto_server: {e} (run scripts/test, which installs it)"))
    })
}

/// A moto server of its own listening on `host` (e.g. the Docker bridge's gateway, for
/// the boot rehearsal's VM to reach), stopped with this process; its endpoint.
pub fn start_on(host: &str) -> Result<String, String> {
    start(host)
}

fn start(host: &str) -> Result<String, String> {
    let bin = moto_server_bin();
    if !bin.exists() {
        return Err(format!("{} does not exist", bin.display()));
    }
    let port = TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    // A shell watches this process and stops moto when it is gone, however it ends.
    let script = format!(
        "'{}' -H {host} -p {port} >/dev/null 2>&1 & m=$!; trap 'kill $m 2>/dev/null' EXIT; \
         while kill -0 {} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done",
        bin.display(),
        std::process::id()
    );
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect((host, port)).is_ok() {
            return Ok(format!("http://{host}:{port}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("moto_server did not listen on port {port} within 60 s"))
}

/// An SDK configuration pointed at moto, with throwaway credentials.
pub fn sdk_config() -> aws_config::SdkConfig {
    sdk_config_at(endpoint())
}

/// An SDK configuration pointed at the moto server at `url`.
pub fn sdk_config_at(url: &str) -> aws_config::SdkConfig {
    let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "moto");
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
            creds,
        ))
        .build()
}

/// Environment for a child process (a Lambda binary) that should use moto.
pub fn env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint().to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}
