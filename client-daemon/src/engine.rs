//! The Docker Engine API, as the daemon uses it: one client over the engine's socket
//! (`DOCKER_HOST` when it is a `unix://` address, else `/var/run/docker.sock`), its API
//! version negotiated with the engine (CI's Docker 20.10 speaks 1.41 at most; Docker
//! Engine 29 refuses clients below 1.44), and the few calls the workspace needs: inspect,
//! pull, create, start, remove, volumes, `top`, upload, and exec with stdin.
//!
//! Owns: the connection and turning the API's answers into plain values and one-line
//! reasons. Must not: know what the workspace is for (the desktop user, CRD): callers
//! say who runs what.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{
    Config, CreateContainerOptions, InspectContainerOptions, LogOutput, RemoveContainerOptions,
    StartContainerOptions, TopOptions, UploadToContainerOptions,
};
use bollard::errors::Error;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::image::CreateImageOptions;
use bollard::volume::RemoveVolumeOptions;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// The connection's own limit; every call the daemon makes has a shorter one of its own,
/// and an attached exec (the desktop host) may last for days.
const CLIENT_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// Output kept of an exec whose output is collected (the tail; a reason needs no more).
const KEPT_OUTPUT: usize = 64 * 1024;

/// The container as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub running: bool,
    pub started_at: String,
}

/// What runs, as whom, with what.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// A user name or uid (`0` for root).
    pub user: String,
    pub workdir: Option<String>,
    /// `KEY=value` each.
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    /// Written to its stdin, which is then closed.
    pub stdin: Option<Vec<u8>>,
}

/// A finished exec: its exit code (128 + n after signal n) and its output's tails.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Itself when it exited 0, else its last line as the reason.
    pub fn ok(self) -> Result<Self, String> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.last_line())
        }
    }

    /// The last non-empty line of stderr (or stdout), for a reason.
    pub fn last_line(&self) -> String {
        let err = String::from_utf8_lossy(&self.stderr);
        let out = String::from_utf8_lossy(&self.stdout);
        err.lines()
            .chain(out.lines())
            .rfind(|l| !l.trim().is_empty())
            .map(|l| l.trim().chars().take(300).collect())
            .unwrap_or_else(|| match self.code {
                Some(c) => format!("exit status {c}"),
                None => "no exit status".to_owned(),
            })
    }
}

/// The output of a running exec, a chunk at a time (stdout and stderr told apart).
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<LogOutput, Error>> + Send>>;

/// The stdin of a running exec.
pub type ExecInput = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// One engine client, built once and shared.
pub struct Engine {
    socket: Docker,
    negotiated: OnceLock<Docker>,
}

fn reason(e: Error) -> String {
    match e {
        Error::DockerResponseServerError { status_code, message } => format!("{message} ({status_code})"),
        other => other.to_string(),
    }
}

fn not_found(e: &Error) -> bool {
    matches!(e, Error::DockerResponseServerError { status_code: 404, .. })
}

fn keep_tail(buf: &mut Vec<u8>, more: &[u8]) {
    buf.extend_from_slice(more);
    if buf.len() > KEPT_OUTPUT {
        buf.drain(..buf.len() - KEPT_OUTPUT);
    }
}

impl Engine {
    /// The client (no I/O until the first call).
    pub fn new() -> Result<Self, String> {
        let path = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| h.starts_with("unix://"))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let socket = Docker::connect_with_unix(&path, CLIENT_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|e| format!("the Docker engine at {path}: {e}"))?;
        Ok(Self {
            socket,
            negotiated: OnceLock::new(),
        })
    }

    fn api(&self) -> &Docker {
        self.negotiated.get().unwrap_or(&self.socket)
    }

    /// The engine answers: the API version is agreed (once) and the engine's version
    /// returned.
    pub async fn ready(&self) -> Result<String, String> {
        if self.negotiated.get().is_none() {
            let docker = self.socket.clone().negotiate_version().await.map_err(reason)?;
            tracing::info!(api = %docker.client_version(), "the Docker engine answers");
            let _ = self.negotiated.set(docker);
        }
        let v = self.api().version().await.map_err(reason)?;
        Ok(v.version.unwrap_or_default())
    }

    /// The container, if it exists.
    pub async fn inspect(&self, name: &str) -> Result<Option<ContainerState>, String> {
        match self
            .api()
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Some(ContainerState {
                    id: c.id.unwrap_or_default(),
                    running: state.running.unwrap_or(false),
                    started_at: state.started_at.unwrap_or_default(),
                }))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(reason(e)),
        }
    }

    pub async fn image_present(&self, image: &str) -> bool {
        self.api().inspect_image(image).await.is_ok()
    }

    /// Pull `image`, logging the engine's progress now and then.
    pub async fn pull(&self, image: &str) -> Result<(), String> {
        let mut progress = self.api().create_image(
            Some(CreateImageOptions {
                from_image: image,
                ..Default::default()
            }),
            None,
            None,
        );
        let mut last_log = std::time::Instant::now();
        while let Some(item) = progress.next().await {
            let info = item.map_err(reason)?;
            if let Some(e) = info.error {
                return Err(e);
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                last_log = std::time::Instant::now();
                tracing::info!(
                    image,
                    status = info.status.as_deref().unwrap_or(""),
                    progress = info.progress.as_deref().unwrap_or(""),
                    "pulling"
                );
            }
        }
        Ok(())
    }

    /// Create the container `name` from `config`, then start it.
    pub async fn create_and_start(&self, name: &str, config: Config<String>) -> Result<(), String> {
        self.api()
            .create_container(
                Some(CreateContainerOptions {
                    name: name.to_owned(),
                    platform: None,
                }),
                config,
            )
            .await
            .map_err(reason)?;
        self.start(name).await
    }

    pub async fn start(&self, name: &str) -> Result<(), String> {
        self.api()
            .start_container(name, None::<StartContainerOptions<String>>)
            .await
            .map_err(reason)
    }

    /// Remove the container, running or not; one already gone is no error.
    pub async fn remove(&self, name: &str) -> Result<(), String> {
        match self
            .api()
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Err(e) if !not_found(&e) => Err(reason(e)),
            _ => Ok(()),
        }
    }

    /// Remove the volume; one already gone is no error.
    pub async fn remove_volume(&self, name: &str) -> Result<(), String> {
        match self
            .api()
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Err(e) if !not_found(&e) => Err(reason(e)),
            _ => Ok(()),
        }
    }

    /// Where the volume's files lie on this host.
    pub async fn volume_dir(&self, name: &str) -> Result<PathBuf, String> {
        let v = self.api().inspect_volume(name).await.map_err(reason)?;
        Ok(PathBuf::from(v.mountpoint))
    }

    /// The host pids of the container's processes.
    pub async fn pids(&self, name: &str) -> Result<Vec<u32>, String> {
        let top = self
            .api()
            .top_processes(name, Some(TopOptions { ps_args: "-o pid" }))
            .await
            .map_err(reason)?;
        let col = top
            .titles
            .unwrap_or_default()
            .iter()
            .position(|t| t.trim() == "PID")
            .unwrap_or(0);
        Ok(top
            .processes
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.get(col)?.trim().parse().ok())
            .collect())
    }

    /// Unpack `tar` into `dir` in the container.
    pub async fn upload(&self, name: &str, dir: &str, tar: Vec<u8>) -> Result<(), String> {
        self.api()
            .upload_to_container(
                name,
                Some(UploadToContainerOptions {
                    path: dir,
                    ..Default::default()
                }),
                tar.into(),
            )
            .await
            .map_err(reason)
    }

    /// Start `spec` in the container; its id and its output as it comes. The process
    /// goes on in the container if the stream is dropped (as with `docker exec`).
    pub async fn exec_stream(&self, name: &str, spec: ExecSpec) -> Result<(String, ExecStream), String> {
        let mut spec = spec;
        let stdin = spec.stdin.take();
        let attach = stdin.is_some();
        let (id, output, mut input) = self.start_exec(name, spec, attach).await?;
        if let Some(bytes) = stdin {
            // A program that exits without reading its stdin is not an error.
            let _ = input.write_all(&bytes).await;
        }
        let _ = input.shutdown().await;
        Ok((id, output))
    }

    /// Start `spec` in the container with its stdin held open: its id, its output, and
    /// its stdin (the workspace helper's channel). `spec.stdin` is not used.
    pub async fn exec_attached(
        &self,
        name: &str,
        spec: ExecSpec,
    ) -> Result<(String, ExecStream, ExecInput), String> {
        self.start_exec(name, spec, true).await
    }

    async fn start_exec(
        &self,
        name: &str,
        spec: ExecSpec,
        attach_stdin: bool,
    ) -> Result<(String, ExecStream, ExecInput), String> {
        let created = self
            .api()
            .create_exec(
                name,
                CreateExecOptions {
                    attach_stdin: Some(attach_stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some(spec.user),
                    working_dir: spec.workdir,
                    env: Some(spec.env),
                    cmd: Some(spec.cmd),
                    ..Default::default()
                },
            )
            .await
            .map_err(reason)?;
        let started = self
            .api()
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(reason)?;
        match started {
            StartExecResults::Attached { output, input } => Ok((created.id, output, input)),
            StartExecResults::Detached => Err("the engine detached an attached exec".to_owned()),
        }
    }

    /// The exit code of an exec whose output stream has ended: the stream ends when the
    /// process does, and the engine may record its exit a moment later.
    pub async fn exit_status(&self, exec_id: &str) -> Result<i64, String> {
        for _ in 0..50 {
            let e = self.api().inspect_exec(exec_id).await.map_err(reason)?;
            if let (Some(false) | None, Some(code)) = (e.running, e.exit_code) {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("the engine reports no exit status".to_owned())
    }

    /// Run `spec` to its end (up to `limit`); its exit code and output.
    pub async fn exec(&self, name: &str, spec: ExecSpec, limit: Duration) -> Result<ExecOutput, String> {
        let run = async {
            let (id, mut output) = self.exec_stream(name, spec).await?;
            let mut out = ExecOutput::default();
            while let Some(chunk) = output.next().await {
                match chunk.map_err(reason)? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        keep_tail(&mut out.stdout, &message)
                    }
                    LogOutput::StdErr { message } => keep_tail(&mut out.stderr, &message),
                    LogOutput::StdIn { .. } => {}
                }
            }
            out.code = Some(self.exit_status(&id).await?);
            Ok(out)
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("did not finish within {limit:?}")),
        }
    }
}
