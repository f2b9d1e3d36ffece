//! First boot of a provisioned VM: the user-data gave the daemon only its launch job's
//! enrollment secret. The daemon asks IMDSv2 for its instance id, presents both to
//! `POST /api/enroll`, and receives its hostname and its own credential. Both are written
//! to disk as ONE file (`<state dir>/enrollment.json`, 0600) through a temporary file and
//! a rename, before anything else happens: a crash leaves either both or neither, never
//! a credential with the wrong hostname, and a restart uses them instead of enrolling
//! again. If the answer is lost or cannot be saved, the daemon enrolls again: the server
//! allows that until the VM reports in, and the new credential replaces the lost one.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use lablink_wire::{EnrollRequest, Enrollment as Enrolled};

use crate::Backoff;

const IMDS: &str = "http://169.254.169.254";
/// Refusals retried with the back-off (about two minutes in all) before the 5-minute waits.
const EARLY_REFUSALS: u32 = 8;

/// What enrollment needs.
pub struct Enrollment<'a> {
    pub api_url: &'a reqwest::Url,
    pub secret: &'a str,
    /// Given (local VMs, tests), or read from IMDSv2.
    pub instance_id: Option<&'a str>,
    /// Where the hostname and credential go, together (see the module's doc).
    pub record_file: &'a Path,
}

/// The instance id from EC2's metadata service (IMDSv2: a session token first).
pub async fn imds_instance_id(http: &reqwest::Client) -> Result<String, String> {
    let token = http
        .put(format!("{IMDS}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("IMDSv2 token: {e}"))?
        .text()
        .await
        .map_err(|e| format!("IMDSv2 token: {e}"))?;
    http.get(format!("{IMDS}/latest/meta-data/instance-id"))
        .header("X-aws-ec2-metadata-token", token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("IMDSv2 instance-id: {e}"))?
        .text()
        .await
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("IMDSv2 instance-id: {e}"))
}

/// Write `data` to `path` through a temporary file and a rename, with `mode`.
fn write_private(path: &Path, data: &str, mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Enroll, retrying until it works: transport errors, 5xx, 404 (the provisioner has not
/// recorded this instance yet) and an answer that cannot be saved are retried with
/// backoff (enrolling again replaces the credential); a refusal (403 wrong or expired
/// secret, 409 enrolled and reported in before) is logged and retried slowly, since
/// only an admin can fix it. Returns the hostname.
pub async fn enroll(e: &Enrollment<'_>) -> String {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("lablink-client-daemon/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds with static settings");
    let mut backoff = Backoff::new();
    let instance_id = match e.instance_id {
        Some(i) => i.to_owned(),
        None => loop {
            match imds_instance_id(&http).await {
                Ok(i) => break i,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the instance id; retrying");
                    backoff.wait().await;
                }
            }
        },
    };
    backoff.reset();
    let url = format!("{}/api/enroll", e.api_url.as_str().trim_end_matches('/'));
    let body = EnrollRequest {
        bootstrap_failure: None,
        instance_id: instance_id.clone(),
        enrollment_secret: e.secret.to_owned(),
    };
    let mut refused = 0u32;
    loop {
        let resp = http
            .post(&url)
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                let text = r.text().await.unwrap_or_default();
                match serde_json::from_str::<Enrolled>(&text) {
                    Ok(answer) => {
                        let record = serde_json::to_string(&answer).expect("the record serializes");
                        match write_private(e.record_file, &record, 0o600) {
                            Ok(()) => {
                                tracing::info!(hostname = %answer.hostname, instance_id, "enrolled");
                                return answer.hostname;
                            }
                            Err(err) => {
                                // Enrolling again replaces this credential (until the
                                // VM reports in), so nothing is lost by retrying.
                                tracing::error!(error = %err, file = %e.record_file.display(), "enrolled but cannot save the credential; enrolling again");
                            }
                        }
                    }
                    // The reason only, not the body: it may hold the credential.
                    Err(err) => {
                        tracing::warn!(error = %err, "enroll answered without hostname and credential")
                    }
                }
                backoff.wait().await;
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if matches!(status.as_u16(), 403 | 409) {
                    // The launch job records its instances only once they exist: a VM
                    // (a local one, at once) may ask before its record is there. The
                    // first refusals are retried with the back-off; then every 5 minutes.
                    refused += 1;
                    if refused <= EARLY_REFUSALS {
                        tracing::warn!(%status, body = %body.chars().take(300).collect::<String>(), refused, "enrollment refused; the launch may not have recorded this instance yet, retrying");
                        backoff.wait().await;
                        continue;
                    }
                    tracing::error!(%status, body = %body.chars().take(300).collect::<String>(), "enrollment refused; retrying in 5 minutes");
                    tokio::time::sleep(Duration::from_secs(300)).await;
                } else {
                    tracing::warn!(%status, body = %body.chars().take(300).collect::<String>(), "enrollment not possible yet; retrying");
                    backoff.wait().await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot reach {url}; retrying");
                backoff.wait().await;
            }
        }
    }
}
