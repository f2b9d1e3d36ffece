//! Admin jobs: launch and destroy run as jobs, not inside an HTTP request. A route
//! [`submit`]s a job (one at a time: the fleet lock), the provisioner runs it and
//! records its progress, the job page polls it.
//!
//! - [`job`]: the record and its id (the forms' idempotency key).
//! - [`store`]: the [`JobStore`] trait; [`dynamo`] (AWS) and [`pg`] (embedded) implement it.
//! - [`aws`]: stored AWS credentials for the provisioner and the identity in use.

pub mod aws;
pub mod dynamo;
pub mod job;
pub mod pg;
pub mod store;

use chrono::{DateTime, Duration, Utc};

pub use job::{ExportOutcome, Job, JobEvent, JobId, JobKind, JobState, JobVm};
pub use store::{JobStore, Lock, StoreError};

/// How long the fleet lock holds without its job finishing (a provisioner run lasts at
/// most 15 minutes; a crashed one frees the fleet after this).
pub const LOCK_LEASE: Duration = Duration::minutes(20);

/// What a submission came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job, queued.
    Created(Job),
    /// A job with this id exists (a double-submitted form): nothing new was made.
    Existing(Job),
    /// Another launch or destroy is running; this one was not made.
    Busy(Option<Job>),
}

/// Queue `job` unless one with its id exists or another job holds the fleet.
pub async fn submit(store: &dyn JobStore, job: Job, now: DateTime<Utc>) -> Result<Submitted, StoreError> {
    if let Some(existing) = store.get(&job.id).await? {
        return Ok(Submitted::Existing(existing));
    }
    let lease = now + LOCK_LEASE;
    if let Lock::HeldBy(other) = store.acquire_lock(&job.id, lease, now, None).await? {
        let holder = store.get(&other).await?;
        // A finished holder whose release was lost gives the lock up; an unfinished one
        // (or one being created right now) keeps it until it ends or its lease runs out.
        match holder {
            Some(h) if h.state.is_finished() => {
                if let Lock::HeldBy(_) = store.acquire_lock(&job.id, lease, now, Some(&other)).await? {
                    return Ok(Submitted::Busy(None));
                }
            }
            holder => return Ok(Submitted::Busy(holder)),
        }
    }
    if !store.insert(&job).await? {
        // The same form twice at the same moment: the other request made it.
        return match store.get(&job.id).await? {
            Some(j) => Ok(Submitted::Existing(j)),
            None => Err(StoreError::Backend(
                "job vanished after a conflicting insert".into(),
            )),
        };
    }
    let mut stored = job;
    stored.version = 1;
    Ok(Submitted::Created(stored))
}
