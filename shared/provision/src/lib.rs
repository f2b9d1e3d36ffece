//! The provisioner: runs launch, destroy and export jobs. Triggered by the jobs table's stream on
//! AWS (the `provisioner` Lambda) or by the embedded store's channel locally; either may
//! deliver a job more than once, and [`Provisioner::process`] is safe to run again:
//!
//! - a finished job is left alone; a running one is taken over only after its lease
//!   (the first attempt died);
//! - a launch adopts the instances its job already launched (found by tag) instead of
//!   launching again, reuses the hostnames it chose, and records rows with
//!   `ON CONFLICT DO NOTHING`;
//! - a step that fails ends the job as failed with the provider's error; instances a
//!   failed launch started are terminated, so no VM is left half-recorded.

pub mod bootstrap;
pub mod compute;
pub mod ec2;
pub mod local;
pub mod schedule;
pub mod stream;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use lablink_core::credential::Secret;
use lablink_core::domain::{Hostname, Phase};
use lablink_db::{Db, exports, fleet};
use lablink_export::{ExportStorage, VmPart};
use lablink_ops::{Job, JobId, JobKind, JobState, JobStore, JobVm, Lock, StoreError};

pub use compute::{Compute, ComputeError, Instance, LaunchSpec, TERMINATE_BATCH};

/// How long one attempt owns a job: under the provisioner Lambda's 15-minute timeout,
/// so the stream's retry after a timed-out attempt finds the lease expired and takes
/// the job over (a retry while the lease runs is skipped as a duplicate).
pub const ATTEMPT_LEASE: Duration = Duration::minutes(14);
/// How long a launch's enrollment secret is accepted.
pub const ENROLLMENT_WINDOW: Duration = Duration::hours(24);

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] lablink_db::DbError),
}

/// What one delivery of a job came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Finished(JobState),
    /// Nothing to do: why.
    Skipped(&'static str),
}

pub struct Provisioner {
    pub store: Arc<dyn JobStore>,
    pub compute: Arc<dyn Compute>,
    pub db: Arc<Db>,
    /// Hostnames are `<prefix>-vm-<n>`.
    pub hostname_prefix: String,
    /// Where data exports go; `None`: export jobs fail saying so.
    pub exports: Option<Exporter>,
}

/// Data export's storage and settings.
pub struct Exporter {
    pub storage: Arc<dyn ExportStorage>,
    pub settings: ExportSettings,
}

/// What every VM collects, and how long the job waits for the VMs' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// Extensions without the dot (`slp`).
    pub extensions: Vec<String>,
    pub max_file_bytes: i64,
    /// The VMs' deadline, from the export's start. The rest of the attempt's lease is
    /// for the assembly (docs/performance.md: how much that is).
    pub wait: std::time::Duration,
}

impl ExportSettings {
    /// `LABLINK_EXPORT_EXTENSIONS` (comma-separated, default `slp`),
    /// `LABLINK_EXPORT_MAX_FILE_MB` (default 2048), `LABLINK_EXPORT_WAIT_SECONDS` (default
    /// 300, at most 600 so the assembly keeps most of the attempt's 14 minutes).
    pub fn read(s: &mut lablink_core::config::Settings) -> Self {
        let d = Self::default();
        let extensions = s
            .optional_with(
                "LABLINK_EXPORT_EXTENSIONS",
                "comma-separated file extensions like slp,h5 (letters and digits)",
                |v: &str| {
                    let list: Vec<String> = v
                        .split(',')
                        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
                        .filter(|e| !e.is_empty())
                        .collect();
                    if list.is_empty() {
                        Err("no extension".to_owned())
                    } else if let Some(bad) = list
                        .iter()
                        .find(|e| e.len() > 16 || !e.chars().all(|c| c.is_ascii_alphanumeric()))
                    {
                        Err(format!("{bad:?} is not an extension"))
                    } else {
                        Ok(list)
                    }
                },
            )
            .unwrap_or(d.extensions);
        // One VM's archive is one PUT, which S3 caps at 5 GiB.
        let mb: i64 = s.ranged("LABLINK_EXPORT_MAX_FILE_MB", 2048, 1, 5120);
        let wait: u64 = s.ranged("LABLINK_EXPORT_WAIT_SECONDS", 300, 10, 600);
        Self {
            extensions,
            max_file_bytes: mb * 1024 * 1024,
            wait: std::time::Duration::from_secs(wait),
        }
    }
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            extensions: vec!["slp".into()],
            max_file_bytes: 2048 * 1024 * 1024,
            wait: std::time::Duration::from_secs(300),
        }
    }
}

/// A step's failure: the message shown on the job page.
struct Failed(String);

impl From<ComputeError> for Failed {
    fn from(e: ComputeError) -> Self {
        Failed(e.0)
    }
}

impl Provisioner {
    /// Run job `id` if it still needs running. Errors are the job store's or the
    /// database's own outages (the caller should let the trigger retry).
    pub async fn process(&self, id: &JobId) -> Result<Processed, ProvisionError> {
        let now = Utc::now();
        let Some(mut job) = self.store.get(id).await? else {
            return Ok(Processed::Skipped("no such job"));
        };
        match job.state {
            s if s.is_finished() => return Ok(Processed::Skipped("already finished")),
            JobState::Running if job.lease_until.is_some_and(|l| l > now) => {
                return Ok(Processed::Skipped("another attempt is running it"));
            }
            _ => {}
        }
        job.state = JobState::Running;
        job.attempts += 1;
        job.lease_until = Some(now + ATTEMPT_LEASE);
        let attempt = job.attempts;
        job.event(
            now,
            format!("attempt {attempt} started ({})", self.compute.kind()),
        );
        if !self.save(&mut job).await? {
            return Ok(Processed::Skipped("claimed by a concurrent delivery"));
        }
        if let Lock::HeldBy(other) = self
            .store
            .acquire_lock(&job.id, now + lablink_ops::LOCK_LEASE, now, None)
            .await?
        {
            return self
                .finish(job, Err(Failed(format!("the fleet is locked by job {other}"))))
                .await;
        }
        let result = match job.kind.clone() {
            JobKind::Launch { num_vms } => self.launch(&mut job, num_vms).await,
            JobKind::Destroy => self.destroy(&mut job).await,
            JobKind::Export => self.export(&mut job).await,
            JobKind::Replace { hostname } => self.replace(&mut job, &hostname).await,
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                // Our own store or database failed: hand the job back so a retry of the
                // trigger can take it over at once, then report the outage.
                job.lease_until = Some(Utc::now());
                job.event(Utc::now(), format!("attempt {attempt} interrupted: {e}"));
                let _ = self.save(&mut job).await;
                return Err(e);
            }
        };
        self.finish(job, result).await
    }

    /// Store `job` and follow its version; `false` if someone else changed it first.
    async fn save(&self, job: &mut Job) -> Result<bool, StoreError> {
        job.updated_at = Utc::now();
        if self.store.replace(job).await? {
            job.version += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn progress(&self, job: &mut Job, message: impl Into<String>) -> Result<(), ProvisionError> {
        job.event(Utc::now(), message);
        self.save(job).await?;
        Ok(())
    }

    async fn finish(
        &self,
        mut job: Job,
        result: Result<String, Failed>,
    ) -> Result<Processed, ProvisionError> {
        let now = Utc::now();
        match result {
            Ok(summary) => {
                job.state = JobState::Succeeded;
                job.event(now, summary);
            }
            Err(Failed(reason)) => {
                job.state = JobState::Failed;
                job.event(now, format!("failed: {reason}"));
                // One stable field for the stack's "failed jobs" metric filter
                // (docs/operations.md, "Alarms"); the reason is the job page's.
                tracing::error!(event = "job_failed", job = %job.id, kind = job.kind.name(), "job failed");
                job.error = Some(reason);
            }
        }
        job.lease_until = None;
        self.save(&mut job).await?;
        self.store.release_lock(&job.id).await?;
        Ok(Processed::Finished(job.state))
    }

    async fn launch(&self, job: &mut Job, n: u32) -> Result<Result<String, Failed>, ProvisionError> {
        let started: DateTime<Utc> = job.events.last().map_or_else(Utc::now, |e| e.at);
        let client = self.db.client().await?;
        if job.hostnames.len() != n as usize {
            let names = fleet::allocate_hostnames(&client, &self.hostname_prefix, n).await?;
            job.hostnames = names.iter().map(|h| h.as_str().to_owned()).collect();
            self.progress(job, format!("hostnames: {}", job.hostnames.join(", ")))
                .await?;
        }
        let hostnames: Vec<Hostname> = job
            .hostnames
            .iter()
            .map(|h| {
                Hostname::parse(h).map_err(|e| lablink_db::DbError::Corrupt(format!("job hostname: {e}")))
            })
            .collect::<Result<_, _>>()?;

        let mut instances = match self.compute.job_instances(&job.id).await {
            Ok(i) => i,
            Err(e) => return Ok(Err(Failed(format!("listing the job's instances: {e}")))),
        };
        if instances.is_empty() {
            let secret = Secret::generate();
            fleet::add_enrollment_secret(
                &client,
                job.id.as_str(),
                &secret.hash(),
                Utc::now() + ENROLLMENT_WINDOW,
            )
            .await?;
            self.progress(job, format!("launching {n} instance(s)")).await?;
            let spec = LaunchSpec {
                job: job.id.clone(),
                hostnames: hostnames.clone(),
                enrollment_secret: secret,
                overrides: job.overrides.clone(),
            };
            instances = match self.compute.launch(&spec).await {
                Ok(i) => i,
                Err(e) => return Ok(Err(Failed(format!("launching instances: {e}")))),
            };
            if let Some(image) = instances.iter().find_map(|i| i.image_id.clone()) {
                job.image_id = Some(image.clone());
                self.progress(job, format!("started from image {image}")).await?;
            }
        } else {
            self.progress(
                job,
                format!(
                    "adopting {} instance(s) an earlier attempt launched",
                    instances.len()
                ),
            )
            .await?;
        }
        let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
        if instances.len() != hostnames.len() {
            return Ok(Err(self
                .undo_launch(
                    job,
                    &ids,
                    format!("asked for {n} instances, got {}", instances.len()),
                )
                .await?));
        }
        let pairs: Vec<(String, Hostname)> = ids.iter().cloned().zip(hostnames.iter().cloned()).collect();
        if let Err(e) = self.compute.name(&pairs).await {
            return Ok(Err(self
                .undo_launch(job, &ids, format!("tagging instances: {e}"))
                .await?));
        }
        let provision = Phase {
            start: started,
            end: Utc::now(),
        };
        let launched: Vec<fleet::Launched> = pairs
            .iter()
            .map(|(id, h)| fleet::Launched {
                hostname: h.clone(),
                instance_id: id.clone(),
            })
            .collect();
        if let Err(e) = fleet::record_launched(&client, job.id.as_str(), &launched, provision).await {
            return Ok(Err(self
                .undo_launch(job, &ids, format!("recording the VMs: {e}"))
                .await?));
        }
        job.vms = pairs
            .iter()
            .map(|(id, h)| JobVm {
                hostname: h.as_str().to_owned(),
                instance_id: id.clone(),
            })
            .collect();
        Ok(Ok(format!(
            "launched {n} VM(s) in {:.1} s; they enroll and report running when booted",
            provision.seconds()
        )))
    }

    /// A launch that cannot be recorded must not leave instances behind.
    async fn undo_launch(
        &self,
        job: &mut Job,
        ids: &[String],
        reason: String,
    ) -> Result<Failed, ProvisionError> {
        self.progress(
            job,
            format!("{reason}; terminating the {} launched instance(s)", ids.len()),
        )
        .await?;
        for batch in ids.chunks(TERMINATE_BATCH) {
            if let Err(e) = self.compute.terminate(batch).await {
                return Ok(Failed(format!("{reason}; terminating them failed too: {e}")));
            }
        }
        Ok(Failed(reason))
    }

    /// Export: open the export for every assigned VM (each gets its own upload URL
    /// through the holder), wait until all have answered or the deadline passes, then
    /// assemble their archives into one zip. A retried job resumes where the export is.
    async fn export(&self, job: &mut Job) -> Result<Result<String, Failed>, ProvisionError> {
        let Some(ex) = &self.exports else {
            return Ok(Err(Failed(
                "data export is not configured here (no export bucket)".into(),
            )));
        };
        let id = job.id.clone();
        let client = self.db.client().await?;
        if exports::state(&client, &id).await?.is_none() {
            let targets = exports::targets(&client).await?;
            // Upload URLs outlive the deadline a little: an upload that started in time
            // may finish (it is then refused as late, and the VM listed unreachable).
            let ttl = ex.settings.wait + std::time::Duration::from_secs(600);
            let mut vms = Vec::with_capacity(targets.len());
            for t in targets {
                match ex.storage.upload_url(id.as_str(), &t.hostname, ttl).await {
                    Ok(url) => vms.push((t, url)),
                    Err(e) => return Ok(Err(Failed(e.to_string()))),
                }
            }
            let deadline = Utc::now() + Duration::from_std(ex.settings.wait).unwrap_or(Duration::minutes(5));
            let spec = exports::ExportSpec {
                extensions: ex.settings.extensions.clone(),
                max_file_bytes: ex.settings.max_file_bytes,
                deadline,
            };
            exports::start(&client, &id, &spec, &vms).await?;
            self.progress(
                job,
                format!(
                    "asked {} VM(s) with a participant for their .{} files; waiting until {} UTC",
                    vms.len(),
                    spec.extensions.join(", ."),
                    deadline.format("%H:%M:%S")
                ),
            )
            .await?;
        }
        // Wait for the answers (a retried job comes here with the export already open).
        loop {
            let Some((state, deadline)) = exports::state(&client, &id).await? else {
                return Ok(Err(Failed("the export's record vanished".into())));
            };
            if state != "collecting"
                || Utc::now() >= deadline
                || exports::outstanding(&client, &id).await? == 0
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let late = exports::close(&client, &id).await?;
        let progress = exports::progress(&client, &id).await?;
        let count = |s: &str| progress.iter().filter(|p| p.state == s).count();
        self.progress(
            job,
            format!(
                "collected: {} sent files, {} had none, {} failed, {} unreachable{}; assembling the zip",
                count("done"),
                count("no_files"),
                count("failed"),
                count("unreachable"),
                if late > 0 {
                    " (no answer by the deadline)"
                } else {
                    ""
                }
            ),
        )
        .await?;
        let parts = progress
            .into_iter()
            .map(|p| VmPart {
                hostname: p.hostname,
                email: p.email,
                state: p.state,
                detail: p.detail,
            })
            .collect();
        let name = lablink_export::zip_name(job.created_at);
        let assembled = lablink_export::assemble(
            Arc::clone(&ex.storage),
            id.as_str().to_owned(),
            name.clone(),
            parts,
            Utc::now(),
        )
        .await;
        match assembled {
            Ok(sum) => {
                exports::finish(&client, &id, true).await?;
                job.export = Some(lablink_ops::ExportOutcome {
                    file: name.clone(),
                    files: sum.files,
                    bytes: sum.bytes,
                    zip_bytes: sum.zip_bytes,
                });
                Ok(Ok(format!(
                    "exported {} file(s), {} bytes, {} skipped: {name} ({} bytes)",
                    sum.files, sum.bytes, sum.skipped, sum.zip_bytes
                )))
            }
            Err(e) => {
                exports::finish(&client, &id, false).await?;
                Ok(Err(Failed(e.to_string())))
            }
        }
    }

    /// Replace one VM: terminate its instance, remove its row, launch one VM in its place
    /// (a new hostname, the deployment's settings). Each step is safe to repeat, so a
    /// retried job resumes: the instance may be terminated already, the row gone, and
    /// the launch adopts what an earlier attempt started.
    async fn replace(&self, job: &mut Job, hostname: &str) -> Result<Result<String, Failed>, ProvisionError> {
        let host = match Hostname::parse(hostname) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Failed(format!("invalid hostname {hostname:?}: {e}")))),
        };
        let client = self.db.client().await?;
        if let Some(vm) = lablink_db::vms::get_vm(&client, &host).await? {
            if let Some(id) = &vm.instance_id {
                self.progress(job, format!("terminating {host} (instance {id})"))
                    .await?;
                if let Err(e) = self.compute.terminate(std::slice::from_ref(id)).await {
                    return Ok(Err(Failed(format!("terminating {host}: {e}"))));
                }
            }
            lablink_db::vms::delete_vm(&client, &host).await?;
            self.progress(job, format!("{host} removed; launching its replacement"))
                .await?;
        }
        let launched = self.launch(job, 1).await?;
        Ok(launched.map(|summary| format!("replaced {host}: {summary}")))
    }

    async fn destroy(&self, job: &mut Job) -> Result<Result<String, Failed>, ProvisionError> {
        let instances = match self.compute.fleet().await {
            Ok(i) => i,
            Err(e) => return Ok(Err(Failed(format!("listing the fleet: {e}")))),
        };
        let ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
        self.progress(job, format!("terminating {} instance(s)", ids.len()))
            .await?;
        let client = self.db.client().await?;
        let mut done = 0;
        for batch in ids.chunks(TERMINATE_BATCH) {
            if let Err(e) = self.compute.terminate(batch).await {
                return Ok(Err(Failed(format!(
                    "terminating instances ({done} of {} terminated): {e}",
                    ids.len()
                ))));
            }
            fleet::delete_instances(&client, batch).await?;
            done += batch.len();
            job.vms
                .extend(instances[done - batch.len()..done].iter().map(|i| JobVm {
                    hostname: i.hostname.clone().unwrap_or_default(),
                    instance_id: i.instance_id.clone(),
                }));
            self.progress(job, format!("terminated {done} of {}", ids.len()))
                .await?;
        }
        let cleared = fleet::clear_fleet(&client).await?;
        Ok(Ok(format!(
            "destroyed: {} instance(s) terminated, {} VM row(s) without an instance cleared",
            ids.len(),
            cleared
        )))
    }
}
