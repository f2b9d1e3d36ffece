//! Provisioning's side of the `vms` table: hostnames for a launch, the rows of launched
//! instances, job-scoped enrollment secrets, and a VM's one-time enrollment.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::DbError;
use lablink_core::credential::{Secret, SecretHash};
use lablink_core::domain::{Hostname, InstanceId, Phase};

/// `n` fresh hostnames `<prefix>-vm-<number>`, numbers from a sequence that never
/// reuses one (even after a destroy). One statement.
pub async fn allocate_hostnames(client: &Client, prefix: &str, n: u32) -> Result<Vec<Hostname>, DbError> {
    let rows = client
        .query(
            "SELECT nextval('vm_number') FROM generate_series(1, $1::int)",
            &[&(n as i32)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let num: i64 = r.get(0);
            let name = format!("{prefix}-vm-{num:03}");
            Hostname::parse(&name).map_err(|e| DbError::Corrupt(format!("hostname {name}: {e}")))
        })
        .collect()
}

/// Keep (the hash of) one of `job_id`'s enrollment secrets, valid until `expires_at`.
pub async fn add_enrollment_secret(
    client: &Client,
    job_id: &str,
    hash: &SecretHash,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO vm_enrollment_secrets (job_id, secret_hash, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&job_id, &hash.as_bytes(), &expires_at],
        )
        .await?;
    Ok(())
}

/// One launched instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub hostname: Hostname,
    pub instance_id: String,
}

/// Record the rows of a launch in one statement (so all or none): status
/// `initializing`, the job, and the provisioning phase. A row that exists already (a
/// retried job) is left alone. Returns how many rows were created.
pub async fn record_launched(
    client: &Client,
    job_id: &str,
    vms: &[Launched],
    provision: Phase,
) -> Result<u64, DbError> {
    let hosts: Vec<&str> = vms.iter().map(|v| v.hostname.as_str()).collect();
    let ids: Vec<&str> = vms.iter().map(|v| v.instance_id.as_str()).collect();
    let n = client
        .execute(
            "INSERT INTO vms (hostname, instance_id, job_id, status,
                              provision_start, provision_end, provision_duration_seconds,
                              total_startup_duration_seconds)
             SELECT h, i, $3, 'initializing', $4, $5, $6, $6
             FROM unnest($1::text[], $2::text[]) AS t(h, i)
             ON CONFLICT DO NOTHING",
            &[
                &hosts,
                &ids,
                &job_id,
                &provision.start,
                &provision.end,
                &provision.seconds(),
            ],
        )
        .await?;
    Ok(n)
}

/// What an enrollment attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// The VM's hostname; the new credential's hash is stored.
    Enrolled(Hostname),
    /// No VM row has this instance id (yet: the provisioner may still be recording it).
    UnknownInstance,
    /// The VM has enrolled before and has since reported in with its credential
    /// (`running` or `error`): its enrollment is settled.
    AlreadyEnrolled,
    /// The secret is not one of the launching job's, or it expired.
    BadSecret,
}

/// Enroll the VM of `instance_id` with `secret` (one of its job's enrollment secrets),
/// storing `credential`'s hash. One statement does the work; a second one runs only to
/// say why nothing happened.
///
/// Recoverable: while the secret is valid and the VM has never reported in with a
/// credential (`initializing`, or `error` from its bootstrap's report or the bootstrap
/// deadline; no `last_seen_at`), the same instance may enroll again;
/// the new credential replaces, and so invalidates, the earlier one. So a lost response
/// or a failed write on the VM is retried instead of refused forever. Once the VM has
/// made any call with its credential the enrollment is settled (`AlreadyEnrolled`), so
/// the launch's shared secret cannot take over a VM that is running or booting.
pub async fn enroll(
    client: &Client,
    instance_id: &InstanceId,
    secret: &Secret,
    credential: &SecretHash,
) -> Result<Enrollment, DbError> {
    let instance_id: &str = instance_id.as_ref();
    let secret_hash = secret.hash();
    let row = client
        .query_opt(
            "UPDATE vms SET credential_hash = $3, enrolled_at = now(), updated_at = now()
             WHERE instance_id = $1
               AND (credential_hash IS NULL OR (status IN ('initializing', 'error') AND last_seen_at IS NULL))
               AND EXISTS (SELECT 1 FROM vm_enrollment_secrets e
                           WHERE e.job_id = vms.job_id AND e.secret_hash = $2 AND e.expires_at > now())
             RETURNING hostname",
            &[&instance_id, &secret_hash.as_bytes(), &credential.as_bytes()],
        )
        .await?;
    if let Some(r) = row {
        let h: String = r.get(0);
        return Hostname::parse(&h)
            .map(Enrollment::Enrolled)
            .map_err(|e| DbError::Corrupt(format!("hostname: {e}")));
    }
    let why = client
        .query_opt(
            "SELECT credential_hash IS NOT NULL AND NOT (status IN ('initializing', 'error') AND last_seen_at IS NULL)
             FROM vms WHERE instance_id = $1",
            &[&instance_id],
        )
        .await?;
    Ok(match why {
        None => Enrollment::UnknownInstance,
        Some(r) if r.get::<_, bool>(0) => Enrollment::AlreadyEnrolled,
        Some(_) => Enrollment::BadSecret,
    })
}

/// What became of a bootstrap's failure report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapReport {
    /// The VM's row is `error` with the reason.
    Recorded(Hostname),
    UnknownInstance,
    /// Its daemon reported in since: the daemon's own status stands.
    ReportedIn,
    BadSecret,
}

/// A VM's bootstrap failed before its daemon ran (`POST /api/enroll` with a failure,
/// authenticated as an enrollment is: the instance a launch job recorded, that job's
/// unexpired secret): its row turns `error` with `reason`, at once rather than at the
/// bootstrap deadline. Only while no daemon has reported (`initializing`, never seen).
pub async fn bootstrap_failed(
    client: &Client,
    instance_id: &InstanceId,
    secret: &Secret,
    reason: &str,
) -> Result<BootstrapReport, DbError> {
    let instance_id: &str = instance_id.as_ref();
    let secret_hash = secret.hash();
    let row = client
        .query_opt(
            "UPDATE vms SET status = 'error', status_reason = $3, updated_at = now()
             WHERE instance_id = $1 AND last_seen_at IS NULL AND status IN ('initializing', 'error')
               AND EXISTS (SELECT 1 FROM vm_enrollment_secrets e
                           WHERE e.job_id = vms.job_id AND e.secret_hash = $2 AND e.expires_at > now())
             RETURNING hostname",
            &[&instance_id, &secret_hash.as_bytes(), &reason],
        )
        .await?;
    if let Some(r) = row {
        let h: String = r.get(0);
        return Hostname::parse(&h)
            .map(BootstrapReport::Recorded)
            .map_err(|e| DbError::Corrupt(format!("hostname: {e}")));
    }
    let seen = client
        .query_opt(
            "SELECT last_seen_at IS NOT NULL FROM vms WHERE instance_id = $1",
            &[&instance_id],
        )
        .await?;
    Ok(match seen {
        None => BootstrapReport::UnknownInstance,
        Some(r) if r.get::<_, bool>(0) => BootstrapReport::ReportedIn,
        Some(_) => BootstrapReport::BadSecret,
    })
}

/// Remove the rows of these (terminated) instances. Returns how many were removed.
pub async fn delete_instances(client: &Client, instance_ids: &[String]) -> Result<u64, DbError> {
    Ok(client
        .execute("DELETE FROM vms WHERE instance_id = ANY($1)", &[&instance_ids])
        .await?)
}

/// Remove every VM row (their logs go by cascade) and every enrollment secret: what a
/// destroy leaves once all instances are terminated. One statement; returns the number
/// of VM rows removed.
pub async fn clear_fleet(client: &Client) -> Result<u64, DbError> {
    // The fleet's end time goes with the fleet (the next launch sets a new one).
    let r = client
        .query_one(
            "WITH secrets AS (DELETE FROM vm_enrollment_secrets),
                  schedule AS (DELETE FROM fleet_schedule),
                  gone AS (DELETE FROM vms RETURNING 1)
             SELECT count(*) FROM gone",
            &[],
        )
        .await?;
    Ok(r.get::<_, i64>(0) as u64)
}

/// Count of VMs per status, and how many are free (running, unassigned).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetCounts {
    pub total: i64,
    pub initializing: i64,
    pub running: i64,
    pub error: i64,
    pub unknown: i64,
    pub assigned: i64,
    pub in_use: i64,
    pub free: i64,
}

pub async fn counts(client: &Client) -> Result<FleetCounts, DbError> {
    let r = client
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE status = 'initializing'),
                    count(*) FILTER (WHERE status = 'running'),
                    count(*) FILTER (WHERE status = 'error'),
                    count(*) FILTER (WHERE status = 'unknown'),
                    count(*) FILTER (WHERE user_email IS NOT NULL),
                    count(*) FILTER (WHERE in_use),
                    count(*) FILTER (WHERE user_email IS NULL AND status = 'running')
             FROM vms",
            &[],
        )
        .await?;
    Ok(FleetCounts {
        total: r.get(0),
        initializing: r.get(1),
        running: r.get(2),
        error: r.get(3),
        unknown: r.get(4),
        assigned: r.get(5),
        in_use: r.get(6),
        free: r.get(7),
    })
}

/// When the fleet is destroyed, and who set it (`None`: no end is set).
pub async fn end(client: &Client) -> Result<Option<(DateTime<Utc>, String)>, DbError> {
    let row = client
        .query_opt("SELECT ends_at, set_by FROM fleet_schedule WHERE id = 1", &[])
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// When the fleet is destroyed (what the participants' pages read).
pub async fn ends_at(client: &Client) -> Result<Option<DateTime<Utc>>, DbError> {
    let row = client
        .query_opt("SELECT ends_at FROM fleet_schedule WHERE id = 1", &[])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Set the fleet's end. `later_only`: keep an end that is already later (a launch
/// never shortens the fleet's life; the admin's extend sets it as given). Returns the
/// end in force.
pub async fn set_end(
    client: &Client,
    ends_at: DateTime<Utc>,
    by: &str,
    later_only: bool,
) -> Result<DateTime<Utc>, DbError> {
    let row = client
        .query_one(
            "INSERT INTO fleet_schedule AS f (id, ends_at, set_by, set_at) VALUES (1, $1, $2, now())
             ON CONFLICT (id) DO UPDATE SET
                 ends_at = CASE WHEN $3 AND f.ends_at > EXCLUDED.ends_at THEN f.ends_at ELSE EXCLUDED.ends_at END,
                 set_by = CASE WHEN $3 AND f.ends_at > EXCLUDED.ends_at THEN f.set_by ELSE EXCLUDED.set_by END,
                 set_at = CASE WHEN $3 AND f.ends_at > EXCLUDED.ends_at THEN f.set_at ELSE now() END
             RETURNING ends_at",
            &[&ends_at, &by, &later_only],
        )
        .await?;
    Ok(row.get(0))
}

/// Forget the fleet's end (nothing left to destroy).
pub async fn clear_end(client: &Client) -> Result<(), DbError> {
    client.execute("DELETE FROM fleet_schedule", &[]).await?;
    Ok(())
}
