//! The embedded job store: the same records in Postgres (tables `ops_jobs`, `ops_locks`,
//! `ops_settings`), for running without AWS. What DynamoDB's stream does on AWS, a
//! channel does here: every inserted job id is sent to the in-process provisioner.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use lablink_db::Db;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::job::{Job, JobId};
use crate::store::{JobStore, Lock, StoreError};

pub struct PgJobStore {
    db: Arc<Db>,
    on_insert: Option<mpsc::UnboundedSender<JobId>>,
}

impl PgJobStore {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db, on_insert: None }
    }

    /// Every inserted job's id is sent here (the local runner's provisioner listens).
    pub fn with_insert_channel(mut self, tx: mpsc::UnboundedSender<JobId>) -> Self {
        self.on_insert = Some(tx);
        self
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, StoreError> {
        self.db
            .client()
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))
    }
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn parse(v: Value) -> Result<Job, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn body(job: &Job) -> Value {
    serde_json::to_value(job).expect("jobs serialize")
}

#[async_trait::async_trait]
impl JobStore for PgJobStore {
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT body FROM ops_jobs WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(backend)?;
        row.map(|r| parse(r.get(0))).transpose()
    }

    async fn insert(&self, job: &Job) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let mut stored = job.clone();
        stored.version = 1;
        let n = c
            .execute(
                "INSERT INTO ops_jobs (id, body, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&job.id.as_str(), &body(&stored), &job.created_at],
            )
            .await
            .map_err(backend)?;
        if n == 1
            && let Some(tx) = &self.on_insert
        {
            let _ = tx.send(job.id.clone());
        }
        Ok(n == 1)
    }

    async fn replace(&self, job: &Job) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let mut stored = job.clone();
        stored.version = job.version + 1;
        let n = c
            .execute(
                "UPDATE ops_jobs SET body = $2 WHERE id = $1 AND (body->>'version')::bigint = $3",
                &[&job.id.as_str(), &body(&stored), &(job.version as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn recent(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT body FROM ops_jobs ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(backend)?;
        rows.into_iter().map(|r| parse(r.get(0))).collect()
    }

    async fn acquire_lock(
        &self,
        job: &JobId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        steal_from: Option<&JobId>,
    ) -> Result<Lock, StoreError> {
        let c = self.client().await?;
        let steal = steal_from.map(JobId::as_str);
        let taken = c
            .query_opt(
                "INSERT INTO ops_locks AS l (name, job_id, lease_until) VALUES ('fleet', $1, $2)
                 ON CONFLICT (name) DO UPDATE SET job_id = EXCLUDED.job_id, lease_until = EXCLUDED.lease_until
                 WHERE l.job_id = $1 OR l.lease_until < $3 OR l.job_id = $4
                 RETURNING job_id",
                &[&job.as_str(), &lease_until, &now, &steal],
            )
            .await
            .map_err(backend)?;
        if taken.is_some() {
            return Ok(Lock::Acquired);
        }
        let holder: Option<String> = c
            .query_opt("SELECT job_id FROM ops_locks WHERE name = 'fleet'", &[])
            .await
            .map_err(backend)?
            .map(|r| r.get(0));
        match holder {
            Some(h) => Ok(Lock::HeldBy(
                JobId::parse(&h).map_err(|e| StoreError::Corrupt(e.into()))?,
            )),
            // Released between the two statements: try once more.
            None => Box::pin(self.acquire_lock(job, lease_until, now, steal_from)).await,
        }
    }

    async fn release_lock(&self, job: &JobId) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM ops_locks WHERE name = 'fleet' AND job_id = $1",
            &[&job.as_str()],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_setting(&self, name: &str, now: DateTime<Utc>) -> Result<Option<Value>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT value FROM ops_settings WHERE name = $1 AND (expires_at IS NULL OR expires_at > $2)",
                &[&name, &now],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn put_setting(
        &self,
        name: &str,
        value: &Value,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO ops_settings (name, value, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            &[&name, value, &expires_at],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute("DELETE FROM ops_settings WHERE name = $1", &[&name])
            .await
            .map_err(backend)?;
        Ok(())
    }
}
