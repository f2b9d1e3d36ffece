//! Validated domain types. A value of one of these types is valid by construction:
//! functions take `&Hostname`, never `&str`. Nothing here knows about HTTP, Lambda,
//! Postgres or AWS.

mod crd;
mod email;
pub mod export;
mod hostname;
mod ids;
mod job_id;
mod pin;
mod status;
mod timings;

pub use crd::{CRD_REDIRECT_URL, CrdCommand, CrdError, START_HOST_PATH};
pub use email::{Email, EmailError};
pub use hostname::{Hostname, HostnameError};
pub use ids::{DeploymentName, InstanceId};
pub use job_id::JobId;
pub use pin::{Pin, PinError};
pub use status::{GpuHealth, GpuHealthError, VmStatus, VmStatusError};
pub use timings::{Phase, RawTimings, StartupTimings, TimingsError};
