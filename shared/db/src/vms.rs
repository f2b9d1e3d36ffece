//! Queries on the `vms` table. Each is one statement (one round trip) unless its doc
//! says otherwise; "found" booleans let callers answer 404 for unknown hostnames.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::DbError;
use lablink_core::credential::SecretHash;
use lablink_core::domain::{CrdCommand, Email, GpuHealth, Hostname, Phase, Pin, StartupTimings, VmStatus};

/// The result of a successful assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub hostname: Hostname,
    pub pin: Pin,
    /// False when this email already held the VM (the same person asked again).
    pub fresh: bool,
}

/// A VM as admins and the VM itself see it. Deliberately without PIN and command.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Vm {
    pub hostname: Hostname,
    pub instance_id: Option<String>,
    pub user_email: Option<String>,
    pub status: VmStatus,
    pub status_reason: Option<String>,
    pub healthy: Option<String>,
    pub in_use: bool,
    pub provision: Option<Phase>,
    pub cloud_init: Option<Phase>,
    pub image_pull: Option<Phase>,
    pub container: Option<Phase>,
    pub tutorial_clone: Option<Phase>,
    pub startup_script: Option<Phase>,
    pub total_startup_seconds: Option<f64>,
    /// How the last start-host run ended, when one ran.
    pub start_host: Option<StartHostRun>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// The outcome of a VM's last start-host run, as its daemon reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StartHostRun {
    pub ok: bool,
    pub exit_code: Option<i32>,
    /// Its last lines, the code and PIN removed by the daemon.
    pub output: String,
    pub at: DateTime<Utc>,
}

/// An assignment not yet delivered to its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAssignment {
    pub command: String,
    pub pin: Pin,
    pub assigned_at: DateTime<Utc>,
}

/// A VM to create.
#[derive(Debug, Clone)]
pub struct NewVm {
    pub hostname: Hostname,
    pub instance_id: Option<String>,
    pub credential_hash: Option<SecretHash>,
    pub status: VmStatus,
    pub provision: Option<Phase>,
}

const ONE_SEAT_INDEX: &str = "vms_one_seat_per_email";

/// Give `email` a free VM, or the VM it already holds.
///
/// ONE statement: the free row is locked with `FOR UPDATE SKIP LOCKED`, so concurrent
/// requests each take a different row and never wait on each other. Two concurrent
/// requests with the same email can both find a free row; the partial unique index
/// refuses the second, which then runs again and finds the first one's VM.
pub async fn assign(
    client: &Client,
    email: &Email,
    command: &CrdCommand,
    pin: &Pin,
) -> Result<Option<Assignment>, DbError> {
    const SQL: &str = "
        WITH existing AS (
            SELECT hostname, pin FROM vms WHERE user_email = $1
        ), candidate AS (
            SELECT hostname FROM vms
            WHERE user_email IS NULL AND status = 'running'
              AND healthy IS DISTINCT FROM 'Unhealthy'
              AND NOT EXISTS (SELECT 1 FROM existing)
            ORDER BY created_at, hostname
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ), assigned AS (
            UPDATE vms SET user_email = $1, crd_command = $2, pin = $3, in_use = FALSE,
                   assigned_at = now(), delivered_at = NULL, updated_at = now()
            FROM candidate WHERE vms.hostname = candidate.hostname
            RETURNING vms.hostname, vms.pin
        )
        SELECT hostname, pin, TRUE AS fresh FROM assigned
        UNION ALL
        SELECT hostname, pin, FALSE FROM existing";
    let normalized = command.normalized();
    for attempt in 0..2 {
        match client
            .query_opt(SQL, &[&email.as_str(), &normalized, &pin.as_str()])
            .await
            .map_err(DbError::from)
        {
            Ok(None) => return Ok(None),
            Ok(Some(row)) => {
                return Ok(Some(Assignment {
                    hostname: host(row.get(0))?,
                    pin: Pin::parse(row.get(1)).map_err(|e| corrupt("pin", e))?,
                    fresh: row.get(2),
                }));
            }
            Err(e) if attempt == 0 && e.is_unique_violation(ONE_SEAT_INDEX) => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the second attempt always returns")
}

/// Free seats: running, unassigned, not known to be unhealthy.
pub async fn free_seat_count(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM vms WHERE user_email IS NULL AND status = 'running'
             AND healthy IS DISTINCT FROM 'Unhealthy'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

const VM_COLUMNS: &str = "hostname, instance_id, user_email, status, status_reason, healthy, in_use,
    provision_start, provision_end, cloud_init_start, cloud_init_end, container_start, container_end,
    total_startup_duration_seconds, assigned_at, delivered_at, created_at, updated_at, last_seen_at,
    image_pull_start, image_pull_end, tutorial_clone_start, tutorial_clone_end,
    startup_script_start, startup_script_end,
    start_host_ok, start_host_exit_code, start_host_output, start_host_at";

fn vm_from_row(r: &tokio_postgres::Row) -> Result<Vm, DbError> {
    let phase = |a: usize, b: usize| match (
        r.get::<_, Option<DateTime<Utc>>>(a),
        r.get::<_, Option<DateTime<Utc>>>(b),
    ) {
        (Some(start), Some(end)) => Some(Phase { start, end }),
        _ => None,
    };
    Ok(Vm {
        hostname: host(r.get(0))?,
        instance_id: r.get(1),
        user_email: r.get(2),
        status: VmStatus::parse(r.get(3)).map_err(|e| corrupt("status", e))?,
        status_reason: r.get(4),
        healthy: r.get(5),
        in_use: r.get(6),
        provision: phase(7, 8),
        cloud_init: phase(9, 10),
        image_pull: phase(19, 20),
        container: phase(11, 12),
        tutorial_clone: phase(21, 22),
        startup_script: phase(23, 24),
        total_startup_seconds: r.get(13),
        start_host: match (
            r.get::<_, Option<bool>>(25),
            r.get::<_, Option<DateTime<Utc>>>(28),
        ) {
            (Some(ok), Some(at)) => Some(StartHostRun {
                ok,
                exit_code: r.get(26),
                output: r.get::<_, Option<String>>(27).unwrap_or_default(),
                at,
            }),
            _ => None,
        },
        assigned_at: r.get(14),
        delivered_at: r.get(15),
        created_at: r.get(16),
        updated_at: r.get(17),
        last_seen_at: r.get(18),
    })
}

pub async fn get_vm(client: &Client, hostname: &Hostname) -> Result<Option<Vm>, DbError> {
    let sql = format!("SELECT {VM_COLUMNS} FROM vms WHERE hostname = $1");
    client
        .query_opt(&sql, &[&hostname.as_str()])
        .await?
        .as_ref()
        .map(vm_from_row)
        .transpose()
}

pub async fn list_vms(client: &Client) -> Result<Vec<Vm>, DbError> {
    let sql = format!("SELECT {VM_COLUMNS} FROM vms ORDER BY created_at, hostname");
    client.query(&sql, &[]).await?.iter().map(vm_from_row).collect()
}

/// Set a VM's status (and the reason, for `error`). Returns false for an unknown VM.
pub async fn set_status(
    client: &Client,
    hostname: &Hostname,
    status: VmStatus,
    reason: Option<&str>,
) -> Result<bool, DbError> {
    set_status_after_start_host(client, hostname, status, reason, None).await
}

/// What a start-host run reported, for [`set_status_after_start_host`].
#[derive(Debug, Clone, Copy)]
pub struct StartHostReport<'a> {
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub output: &'a str,
}

/// [`set_status`], recording in the same statement how the start-host run this report
/// follows ended (when `start_host` is given; the last outcome stays otherwise).
pub async fn set_status_after_start_host(
    client: &Client,
    hostname: &Hostname,
    status: VmStatus,
    reason: Option<&str>,
    start_host: Option<StartHostReport<'_>>,
) -> Result<bool, DbError> {
    let clip = |r: &str, n: usize| super::logs::without_nul(&r.chars().take(n).collect::<String>());
    let reason: Option<String> = reason.map(|r| clip(r, 1024));
    let (ok, code, output) = match start_host {
        Some(o) => (Some(o.ok), o.exit_code, Some(clip(o.output, 2000))),
        None => (None, None, None),
    };
    let n = client
        .execute(
            "UPDATE vms SET status = $2, status_reason = $3, updated_at = now(), last_seen_at = now(),
                start_host_ok = COALESCE($4, start_host_ok),
                start_host_exit_code = CASE WHEN $4::boolean IS NULL THEN start_host_exit_code ELSE $5 END,
                start_host_output = COALESCE($6, start_host_output),
                start_host_at = CASE WHEN $4::boolean IS NULL THEN start_host_at ELSE now() END
             WHERE hostname = $1",
            &[&hostname.as_str(), &status.as_str(), &reason, &ok, &code, &output],
        )
        .await?;
    Ok(n == 1)
}

/// VMs launched `deadline` ago whose daemon never reported anything: their bootstrap did
/// not finish (user-data failed before the daemon started: its download, its checksum, a
/// broken image), so they are marked `error` with the reason and stay out of the pool. A
/// VM whose daemon reports (`initializing` while it pulls the image or runs the startup
/// script, however long that takes) is left to report its own outcome; one that reports
/// later still sets its own status. Returns the hostnames marked.
pub async fn expire_bootstraps(
    client: &Client,
    deadline: std::time::Duration,
) -> Result<Vec<Hostname>, DbError> {
    let minutes = (deadline.as_secs() / 60).max(1);
    let reason = format!(
        "bootstrap did not finish within {minutes} minute{}: the VM never reported; see its EC2 console output (cloud-init's lablink-bootstrap lines)",
        if minutes == 1 { "" } else { "s" }
    );
    let rows = client
        .query(
            "UPDATE vms SET status = 'error', status_reason = $2, updated_at = now()
             WHERE status = 'initializing' AND last_seen_at IS NULL
               AND created_at < now() - make_interval(secs => $1)
             RETURNING hostname",
            &[&(deadline.as_secs_f64()), &reason],
        )
        .await?;
    rows.iter().map(|r| host(r.get(0))).collect()
}

pub async fn get_status(client: &Client, hostname: &Hostname) -> Result<Option<VmStatus>, DbError> {
    let row = client
        .query_opt(
            "SELECT status FROM vms WHERE hostname = $1",
            &[&hostname.as_str()],
        )
        .await?;
    row.map(|r| VmStatus::parse(r.get(0)).map_err(|e| corrupt("status", e)))
        .transpose()
}

pub async fn list_statuses(client: &Client) -> Result<Vec<(Hostname, VmStatus)>, DbError> {
    let rows = client
        .query("SELECT hostname, status FROM vms ORDER BY hostname", &[])
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                host(r.get(0))?,
                VmStatus::parse(r.get(1)).map_err(|e| corrupt("status", e))?,
            ))
        })
        .collect()
}

pub async fn set_in_use(client: &Client, hostname: &Hostname, in_use: bool) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE vms SET in_use = $2, updated_at = now(), last_seen_at = now() WHERE hostname = $1",
            &[&hostname.as_str(), &in_use],
        )
        .await?;
    Ok(n == 1)
}

pub async fn set_gpu_health(
    client: &Client,
    hostname: &Hostname,
    health: GpuHealth,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE vms SET healthy = $2, updated_at = now(), last_seen_at = now() WHERE hostname = $1",
            &[&hostname.as_str(), &health.as_str()],
        )
        .await?;
    Ok(n == 1)
}

/// Record the phases a VM reported and derive the total start-up time: the span from
/// the earliest recorded start (provisioning when known) to the latest recorded end.
/// Phases overlap (the container is pulled during cloud-init), so summing them would
/// overstate it. Returns the new total, or `None` for an unknown VM.
pub async fn record_timings(
    client: &Client,
    hostname: &Hostname,
    t: &StartupTimings,
) -> Result<Option<f64>, DbError> {
    let (ci_s, ci_e, ci_d) = parts(t.cloud_init);
    let (c_s, c_e, c_d) = parts(t.container);
    let (p_s, p_e, _) = parts(t.image_pull);
    let (g_s, g_e, _) = parts(t.tutorial_clone);
    let (s_s, s_e, _) = parts(t.startup_script);
    // GREATEST and LEAST skip NULLs: the span covers whichever phases are known.
    let row = client
        .query_opt(
            "UPDATE vms SET
                cloud_init_start = COALESCE($2, cloud_init_start),
                cloud_init_end = COALESCE($3, cloud_init_end),
                cloud_init_duration_seconds = COALESCE($4, cloud_init_duration_seconds),
                container_start = COALESCE($5, container_start),
                container_end = COALESCE($6, container_end),
                container_startup_duration_seconds = COALESCE($7, container_startup_duration_seconds),
                image_pull_start = COALESCE($8, image_pull_start),
                image_pull_end = COALESCE($9, image_pull_end),
                tutorial_clone_start = COALESCE($10, tutorial_clone_start),
                tutorial_clone_end = COALESCE($11, tutorial_clone_end),
                startup_script_start = COALESCE($12, startup_script_start),
                startup_script_end = COALESCE($13, startup_script_end),
                total_startup_duration_seconds = EXTRACT(EPOCH FROM (
                    GREATEST(provision_end, COALESCE($3, cloud_init_end), COALESCE($6, container_end),
                             COALESCE($9, image_pull_end), COALESCE($11, tutorial_clone_end),
                             COALESCE($13, startup_script_end))
                  - LEAST(provision_start, COALESCE($2, cloud_init_start), COALESCE($5, container_start),
                          COALESCE($8, image_pull_start), COALESCE($10, tutorial_clone_start),
                          COALESCE($12, startup_script_start))
                ))::double precision,
                updated_at = now(), last_seen_at = now()
             WHERE hostname = $1
             RETURNING total_startup_duration_seconds",
            &[
                &hostname.as_str(),
                &ci_s,
                &ci_e,
                &ci_d,
                &c_s,
                &c_e,
                &c_d,
                &p_s,
                &p_e,
                &g_s,
                &g_e,
                &s_s,
                &s_e,
            ],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, Option<f64>>(0).unwrap_or(0.0)))
}

fn parts(p: Option<Phase>) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<f64>) {
    match p {
        Some(p) => (Some(p.start), Some(p.end), Some(p.seconds())),
        None => (None, None, None),
    }
}

/// The assignment a VM has not received yet, if any. The holder asks this before it
/// waits and after every reconnect (the "lost wake-up" fix).
pub async fn undelivered_assignment(
    client: &Client,
    hostname: &Hostname,
) -> Result<Option<PendingAssignment>, DbError> {
    let row = client
        .query_opt(
            "SELECT crd_command, pin, assigned_at FROM vms
             WHERE hostname = $1 AND crd_command IS NOT NULL AND delivered_at IS NULL",
            &[&hostname.as_str()],
        )
        .await?;
    row.map(|r| {
        Ok(PendingAssignment {
            command: r.get(0),
            pin: Pin::parse(r.get(1)).map_err(|e| corrupt("pin", e))?,
            assigned_at: r.get(2),
        })
    })
    .transpose()
}

/// Mark an assignment delivered, identified by what was delivered (the holder knows the
/// PIN and command from the notification, not the row's timestamps). A newer assignment
/// (the VM was freed and re-assigned meanwhile, with a fresh PIN) stays undelivered.
/// Returns whether a row changed.
pub async fn mark_delivered(
    client: &Client,
    hostname: &Hostname,
    pin: &Pin,
    command: &str,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE vms SET delivered_at = now(), updated_at = now(), last_seen_at = now()
             WHERE hostname = $1 AND pin = $2 AND crd_command = $3 AND delivered_at IS NULL",
            &[&hostname.as_str(), &pin.as_str(), &command],
        )
        .await?;
    Ok(n == 1)
}

/// What the holder needs to answer a VM's poll, in one round trip: the VM's credential
/// hash (`None` for legacy rows without one) and its undelivered assignment, if any.
/// `Ok(None)` for an unknown VM.
pub async fn startup_lookup(
    client: &Client,
    hostname: &Hostname,
) -> Result<Option<(Option<SecretHash>, Option<PendingAssignment>)>, DbError> {
    let row = client
        .query_opt(
            "SELECT credential_hash, crd_command, pin, assigned_at, delivered_at FROM vms WHERE hostname = $1",
            &[&hostname.as_str()],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let hash = r
        .get::<_, Option<Vec<u8>>>(0)
        .and_then(|b| SecretHash::from_slice(&b));
    let pending = pending_from(r.get(1), r.get(2), r.get(3), r.get(4))?;
    Ok(Some((hash, pending)))
}

/// The undelivered assignments of many VMs in one statement (the holder's re-check of
/// every waiter after its listening connection came back).
pub async fn undelivered_assignments(
    client: &Client,
    hostnames: &[Hostname],
) -> Result<Vec<(Hostname, PendingAssignment)>, DbError> {
    let names: Vec<&str> = hostnames.iter().map(Hostname::as_str).collect();
    let rows = client
        .query(
            "SELECT hostname, crd_command, pin, assigned_at FROM vms
             WHERE hostname = ANY($1) AND crd_command IS NOT NULL AND delivered_at IS NULL",
            &[&names],
        )
        .await?;
    // One bad row must not keep every other waiter from its assignment: skip and log it.
    Ok(rows
        .iter()
        .filter_map(|r| {
            let p = pending_from(r.get(1), r.get(2), r.get(3), None).transpose()?;
            match host(r.get(0)).and_then(|h| p.map(|p| (h, p))) {
                Ok(found) => Some(found),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an invalid assignment row");
                    None
                }
            }
        })
        .collect())
}

fn pending_from(
    command: Option<String>,
    pin: Option<String>,
    assigned_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
) -> Result<Option<PendingAssignment>, DbError> {
    match (command, pin, assigned_at, delivered_at) {
        (Some(command), Some(pin), Some(assigned_at), None) => Ok(Some(PendingAssignment {
            command,
            pin: Pin::parse(&pin).map_err(|e| corrupt("pin", e))?,
            assigned_at,
        })),
        _ => Ok(None),
    }
}

/// Create VM rows in one statement. A hostname that exists already is left as it is
/// (a retried provisioning step must not reset a VM); returns how many were created.
pub async fn create_vms(client: &Client, vms: &[NewVm]) -> Result<u64, DbError> {
    let hostnames: Vec<&str> = vms.iter().map(|v| v.hostname.as_str()).collect();
    let instance_ids: Vec<Option<&str>> = vms.iter().map(|v| v.instance_id.as_deref()).collect();
    let hashes: Vec<Option<&[u8]>> = vms
        .iter()
        .map(|v| v.credential_hash.as_ref().map(SecretHash::as_bytes))
        .collect();
    let statuses: Vec<&str> = vms.iter().map(|v| v.status.as_str()).collect();
    let (ps, pe, pd): (Vec<_>, Vec<_>, Vec<_>) = vms.iter().map(|v| parts(v.provision)).fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |(mut a, mut b, mut c), (s, e, d)| {
            a.push(s);
            b.push(e);
            c.push(d);
            (a, b, c)
        },
    );
    let n = client
        .execute(
            "INSERT INTO vms (hostname, instance_id, credential_hash, status,
                              provision_start, provision_end, provision_duration_seconds,
                              total_startup_duration_seconds)
             SELECT h, i, c, s, ps, pe, pd, pd
             FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[],
                         $5::timestamptz[], $6::timestamptz[], $7::float8[]) AS t(h, i, c, s, ps, pe, pd)
             ON CONFLICT (hostname) DO NOTHING",
            &[&hostnames, &instance_ids, &hashes, &statuses, &ps, &pe, &pd],
        )
        .await?;
    Ok(n)
}

/// The stored credential hash of a VM: `Ok(None)` for an unknown VM,
/// `Ok(Some(None))` for a VM that has no credential (legacy rows).
pub async fn credential_hash(
    client: &Client,
    hostname: &Hostname,
) -> Result<Option<Option<SecretHash>>, DbError> {
    let row = client
        .query_opt(
            "SELECT credential_hash FROM vms WHERE hostname = $1",
            &[&hostname.as_str()],
        )
        .await?;
    Ok(row.map(|r| {
        r.get::<_, Option<Vec<u8>>>(0)
            .and_then(|b| SecretHash::from_slice(&b))
    }))
}

/// Remove every VM (and, by cascade, its logs). Returns how many were removed.
pub async fn clear_all(client: &Client) -> Result<u64, DbError> {
    Ok(client.execute("DELETE FROM vms", &[]).await?)
}

fn host(s: &str) -> Result<Hostname, DbError> {
    Hostname::parse(s).map_err(|e| corrupt("hostname", e))
}

/// A stored value our own types refuse: the schema's checks should make this impossible.
fn corrupt(column: &str, e: impl std::fmt::Display) -> DbError {
    DbError::Corrupt(format!("{column}: {e}"))
}
