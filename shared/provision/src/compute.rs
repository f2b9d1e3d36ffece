//! Where VMs come from. [`Ec2Compute`](crate::ec2::Ec2Compute) launches GPU instances;
//! [`LocalCompute`](crate::local::LocalCompute) runs client-daemon processes on this
//! machine with a stand-in `start-host`. The provisioner sees only this trait.

use lablink_core::credential::Secret;
use lablink_core::domain::Hostname;
use lablink_ops::JobId;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ComputeError(pub String);

/// One launch request: `hostnames.len()` VMs for `job`, all enrolling with `secret`.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub job: JobId,
    pub hostnames: Vec<Hostname>,
    /// Job-scoped: each VM presents it once, with its instance id, to `POST /api/enroll`.
    pub enrollment_secret: Secret,
    /// What this launch changes of the deployment's VM settings (kept on the job).
    pub overrides: lablink_core::vm_settings::LaunchOverrides,
}

/// An instance as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    /// The hostname tag, once set.
    pub hostname: Option<String>,
    /// Position within its launch (pairs instances with the job's hostnames).
    pub launch_index: i32,
    /// The image it was started from, when the provider says.
    pub image_id: Option<String>,
}

#[async_trait::async_trait]
pub trait Compute: Send + Sync {
    /// `ec2` or `local`, for messages.
    fn kind(&self) -> &'static str;
    /// Instances (not terminated) that `job` launched: a retried job adopts them
    /// instead of launching again.
    async fn job_instances(&self, job: &JobId) -> Result<Vec<Instance>, ComputeError>;
    /// Launch `spec.hostnames.len()` instances in one call.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Vec<Instance>, ComputeError>;
    /// Label each instance with its hostname.
    async fn name(&self, pairs: &[(String, Hostname)]) -> Result<(), ComputeError>;
    /// Every instance of this deployment that is not terminated.
    async fn fleet(&self) -> Result<Vec<Instance>, ComputeError>;
    /// Terminate these instances (at most [`TERMINATE_BATCH`] per call).
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ComputeError>;
}

/// Instances terminated per call (EC2 takes up to 1000; smaller batches show progress
/// and keep a failure's blast radius small).
pub const TERMINATE_BATCH: usize = 50;
