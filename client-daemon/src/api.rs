//! The daemon's calls to LabLink: the classic paths and bodies (the types of
//! `lablink-wire`), plus the VM's credential as a bearer token (when it has one).

use std::time::Duration;

use lablink_core::domain::{GpuHealth, Hostname, VmStatus};
use lablink_wire::{
    GpuHealthReport, InUseReport, RawTimings, StartHostOutcome, StartupAnswer, VmPoll, VmStatusReport,
};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
}

impl ApiError {
    /// A refusal that retrying will not fix by itself (bad credential, unknown VM...).
    pub fn is_client_error(&self) -> bool {
        matches!(self, ApiError::Status { status, .. } if status.is_client_error())
    }
}

/// What the holder answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    Assigned {
        command: String,
        pin: String,
    },
    /// The admin released this VM's seat: reset the workspace, then report it done.
    Reset {
        id: u64,
        keep_files: bool,
    },
    NothingYet,
}

pub struct Api {
    http: reqwest::Client,
    api: reqwest::Url,
    holder: reqwest::Url,
    host: Hostname,
    credential: Option<String>,
    poll_wait: Duration,
}

impl Api {
    pub fn new(cfg: &Config) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("lablink-client-daemon/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with static settings");
        Self {
            http,
            api: cfg.api_url.clone(),
            holder: cfg.holder_url.clone(),
            host: cfg.hostname.clone(),
            credential: cfg.credential.clone(),
            poll_wait: cfg.poll_wait,
        }
    }

    fn url(base: &reqwest::Url, path: &str) -> String {
        format!("{}{}", base.as_str().trim_end_matches('/'), path)
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.post(url);
        match &self.credential {
            Some(c) => r.bearer_auth(c),
            None => r,
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn hostname(&self) -> &Hostname {
        &self.host
    }

    /// A long-poll on the holder's `path` (`{"hostname"}`, held up to the window): `None`
    /// when the window ended with nothing (204), else a 2xx's status, body and URL; any
    /// other status is an error.
    pub(crate) async fn holder_post(
        &self,
        path: &str,
    ) -> Result<Option<(reqwest::StatusCode, String, String)>, ApiError> {
        let url = format!(
            "{}?wait={}",
            Self::url(&self.holder, path),
            self.poll_wait.as_secs()
        );
        // The holder answers by the end of the window; allow for a slow network.
        let (status, text) = self
            .send(
                &url,
                self.poll_wait + Duration::from_secs(30),
                &VmPoll {
                    hostname: self.hostname_field(),
                },
            )
            .await?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ApiError::Status {
                url,
                status,
                body: text.chars().take(300).collect(),
            });
        }
        Ok(Some((status, text, url)))
    }

    /// `POST` `body` to `url` (with the credential): status and body text.
    async fn send(
        &self,
        url: &str,
        timeout: Duration,
        body: &impl Serialize,
    ) -> Result<(reqwest::StatusCode, String), ApiError> {
        let transport = |source| ApiError::Transport {
            url: url.to_owned(),
            source,
        };
        let resp = self
            .request(url)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        Ok((status, text))
    }

    /// `POST` `body` to the API's `path`; a 2xx is success (its body, a message for
    /// people, is not read).
    pub(crate) async fn post(&self, path: &str, body: &impl Serialize) -> Result<(), ApiError> {
        let url = Self::url(&self.api, path);
        let (status, text) = self.send(&url, Duration::from_secs(30), body).await?;
        if !status.is_success() {
            return Err(ApiError::Status {
                url,
                status,
                body: text.chars().take(300).collect(),
            });
        }
        Ok(())
    }

    fn hostname_field(&self) -> String {
        self.host.as_str().to_owned()
    }

    pub async fn status(&self, status: VmStatus, reason: Option<&str>) -> Result<(), ApiError> {
        self.report(status, reason, None, None).await
    }

    /// `running` (or `error`) after the reset `id` is done.
    pub async fn status_after_reset(
        &self,
        status: VmStatus,
        reason: Option<&str>,
        id: u64,
    ) -> Result<(), ApiError> {
        self.report(status, reason, None, Some(id)).await
    }

    /// A status report that carries the outcome of the start-host run it follows.
    pub async fn status_after_start_host(
        &self,
        status: VmStatus,
        reason: Option<&str>,
        start_host: Option<&StartHostOutcome>,
    ) -> Result<(), ApiError> {
        self.report(status, reason, start_host, None).await
    }

    async fn report(
        &self,
        status: VmStatus,
        reason: Option<&str>,
        start_host: Option<&StartHostOutcome>,
        reset: Option<u64>,
    ) -> Result<(), ApiError> {
        let body = VmStatusReport {
            hostname: self.hostname_field(),
            status: status.as_str().to_owned(),
            reason: reason.map(|r| r.chars().take(1000).collect()),
            start_host: start_host.cloned(),
            reset,
        };
        self.post("/api/vm-status", &body).await
    }

    pub async fn gpu_health(&self, h: GpuHealth) -> Result<(), ApiError> {
        let body = GpuHealthReport {
            hostname: self.hostname_field(),
            gpu_status: h.to_wire(),
        };
        self.post("/api/gpu_health", &body).await
    }

    pub async fn in_use(&self, in_use: bool) -> Result<(), ApiError> {
        let body = InUseReport {
            hostname: self.hostname_field(),
            status: in_use,
        };
        self.post("/api/update_inuse_status", &body).await
    }

    pub async fn metrics(&self, timings: &RawTimings) -> Result<(), ApiError> {
        self.post(&format!("/api/vm-metrics/{}", self.host), timings)
            .await
    }

    /// One long-poll: held by the holder up to the configured window.
    pub async fn poll(&self) -> Result<Poll, ApiError> {
        let Some((status, text, url)) = self.holder_post("/vm_startup").await? else {
            return Ok(Poll::NothingYet);
        };
        let bad = |body: String| ApiError::Status {
            url: url.clone(),
            status,
            body,
        };
        // `status` must be "success" (or ours, "reset"): anything else is what a classic
        // client takes for a final rejection, so it is an error here too.
        let answer: StartupAnswer = serde_json::from_str(&text).map_err(|e| {
            bad(if e.is_syntax() || e.is_eof() {
                "not JSON".into()
            } else {
                "a 200 that is neither an assignment (status, command, pin) nor a reset".into()
            })
        })?;
        Ok(match answer {
            StartupAnswer::Assignment(a) => Poll::Assigned {
                command: a.command,
                pin: a.pin,
            },
            StartupAnswer::Reset(r) => Poll::Reset {
                id: r.reset,
                keep_files: r.keep_files,
            },
        })
    }
}
