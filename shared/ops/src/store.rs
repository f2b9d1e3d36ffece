//! Where jobs, the fleet lock and settings live. Two implementations of one trait:
//! [`DynamoJobStore`](crate::dynamo::DynamoJobStore) on AWS, and
//! [`PgJobStore`](crate::pg::PgJobStore) for running without AWS.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::job::{Job, JobId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store: {0}")]
    Backend(String),
    #[error("job store: a stored record is unreadable: {0}")]
    Corrupt(String),
}

/// Who holds the fleet lock after an attempt to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    Acquired,
    HeldBy(JobId),
}

#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// The job, read consistently.
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;
    /// Store a new job; `false` when one with this id exists.
    async fn insert(&self, job: &Job) -> Result<bool, StoreError>;
    /// Store `job` (its `version` is the one read) as version + 1; `false` when the
    /// stored version moved on meanwhile (someone else changed it).
    async fn replace(&self, job: &Job) -> Result<bool, StoreError>;
    /// The newest jobs first.
    async fn recent(&self, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Take the fleet lock for `job` until `lease_until`: free, expired, already
    /// `job`'s, or (compare-and-swap) held by `steal_from`.
    async fn acquire_lock(
        &self,
        job: &JobId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        steal_from: Option<&JobId>,
    ) -> Result<Lock, StoreError>;
    /// Give the lock back if `job` holds it.
    async fn release_lock(&self, job: &JobId) -> Result<(), StoreError>;

    /// A setting, unless absent or expired.
    async fn get_setting(&self, name: &str, now: DateTime<Utc>) -> Result<Option<Value>, StoreError>;
    async fn put_setting(
        &self,
        name: &str,
        value: &Value,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;
    async fn delete_setting(&self, name: &str) -> Result<(), StoreError>;
}
