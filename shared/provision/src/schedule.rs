//! A fleet cannot be forgotten: once its end time has passed, a destroy job is submitted,
//! a job like one the admin submits (the fleet lock, the job page, the provisioner). A
//! tick runs every minute (AWS: an EventBridge schedule invoking the provisioner; the
//! local runner: a timer). The destroy job's id is derived from the end time, so every
//! tick after the end names the same job and submits it at most once; if it fails, the
//! next tick submits another attempt (up to 16).

use chrono::{DateTime, Utc};
use lablink_db::{Db, fleet};
use lablink_ops::{Job, JobId, JobKind, JobState, JobStore, Submitted};

use crate::ProvisionError;

/// Who submits the destroy (its `requested_by`).
pub const SCHEDULER: &str = "schedule (the fleet's end time)";

/// What one tick came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// No end is set.
    NoEnd,
    /// The end is ahead.
    NotYet(DateTime<Utc>),
    /// The end passed with no VM left: the end is cleared.
    NothingToDestroy,
    /// The destroy job was submitted now.
    Submitted(JobId),
    /// It was submitted by an earlier tick.
    AlreadySubmitted(JobId),
    /// Another job holds the fleet; the next tick tries again.
    Busy,
}

/// The destroy job of the end time `ends_at` (the same id for every tick).
pub fn destroy_job_id(ends_at: DateTime<Utc>) -> JobId {
    destroy_attempt_id(ends_at, 0)
}

/// Attempts after a failed destroy: a new job each (the fleet must still go).
const MAX_ATTEMPTS: u32 = 16;

/// The `attempt`th destroy job of the end time `ends_at`.
fn destroy_attempt_id(ends_at: DateTime<Utc>, attempt: u32) -> JobId {
    JobId::parse(&format!(
        "{}-0000e{:03x}",
        ends_at.format("%Y%m%dT%H%M%SZ"),
        0xd0 + attempt
    ))
    .expect("a formatted time and 8 hex digits make a job id")
}

/// One tick at `now`.
pub async fn tick(store: &dyn JobStore, db: &Db, now: DateTime<Utc>) -> Result<Tick, ProvisionError> {
    let client = db.client().await?;
    let Some((ends_at, _)) = fleet::end(&client).await? else {
        return Ok(Tick::NoEnd);
    };
    if now < ends_at {
        return Ok(Tick::NotYet(ends_at));
    }
    if fleet::counts(&client).await?.total == 0 {
        fleet::clear_end(&client).await?;
        return Ok(Tick::NothingToDestroy);
    }
    // The first attempt not yet failed: a failed destroy is followed by a new one on the
    // next tick, so a fleet whose end has passed is never left running quietly.
    let mut attempt = 0;
    let id = loop {
        let id = destroy_attempt_id(ends_at, attempt);
        match store.get(&id).await? {
            Some(job) if job.state == JobState::Failed && attempt + 1 < MAX_ATTEMPTS => attempt += 1,
            Some(_) => return Ok(Tick::AlreadySubmitted(id)),
            None => break id,
        }
    };
    Ok(
        match lablink_ops::submit(store, Job::new(id.clone(), JobKind::Destroy, SCHEDULER, now), now).await? {
            Submitted::Created(_) => {
                tracing::warn!(job = %id, %ends_at, attempt, event = "fleet_end_destroy", "the fleet's end time passed: destroying it");
                Tick::Submitted(id)
            }
            Submitted::Existing(_) => Tick::AlreadySubmitted(id),
            Submitted::Busy(_) => Tick::Busy,
        },
    )
}
