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
    /// Whether the VM's stored command is the one just given (always for a fresh seat):
    /// when it is not, the caller may send it as a fresh code ([`crate::seats::send_code`]).
    pub same_command: bool,
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
    /// The daemon reported start-host's outcome for the current assignment.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Fresh codes sent to the current seat.
    pub code_changes: i32,
    /// A reset (release) the daemon has not reported done: the VM is out of the pool.
    pub reset_pending: bool,
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

/// What the holder must hand a VM's poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Assignment(PendingAssignment),
    /// The admin released the seat: the daemon resets its workspace first.
    Reset {
        id: i64,
        keep_files: bool,
    },
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
            -- A reassigned seat has no command (nor PIN) until its participant's first.
            SELECT hostname, COALESCE(pin, $3) AS pin, crd_command IS NOT DISTINCT FROM $2 AS same
            FROM vms WHERE user_email = $1
        ), candidate AS (
            SELECT hostname FROM vms
            WHERE user_email IS NULL AND status = 'running' AND reset_id IS NULL
              AND healthy IS DISTINCT FROM 'Unhealthy'
              AND NOT EXISTS (SELECT 1 FROM existing)
            ORDER BY created_at, hostname
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ), assigned AS (
            UPDATE vms SET user_email = $1, crd_command = $2, pin = $3, in_use = FALSE,
                   assigned_at = now(), delivered_at = NULL, acknowledged_at = NULL,
                   code_changes = 0, code_changed_at = now(), updated_at = now()
            FROM candidate WHERE vms.hostname = candidate.hostname
            RETURNING vms.hostname, vms.pin
        )
        SELECT hostname, pin, TRUE AS fresh, TRUE AS same FROM assigned
        UNION ALL
        SELECT hostname, pin, FALSE, same FROM existing";
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
                    same_command: row.get(3),
                }));
            }
            Err(e) if attempt == 0 && e.is_unique_violation(ONE_SEAT_INDEX) => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the second attempt always returns")
}

/// Whether `email` holds a seat (its own VM, which asking again returns).
pub async fn holds_seat(client: &Client, email: &Email) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM vms WHERE user_email = $1)",
            &[&email.as_str()],
        )
        .await?;
    Ok(row.get(0))
}

/// Free seats: running, unassigned, not being reset, not known to be unhealthy.
pub async fn free_seat_count(client: &Client) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM vms WHERE user_email IS NULL AND status = 'running'
             AND reset_id IS NULL AND healthy IS DISTINCT FROM 'Unhealthy'",
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
    start_host_ok, start_host_exit_code, start_host_output, start_host_at,
    acknowledged_at, code_changes, reset_id IS NOT NULL";

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
        acknowledged_at: r.get(29),
        code_changes: r.get(30),
        reset_pending: r.get(31),
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
    set_status_after_start_host(client, hostname, status, reason, None, None).await
}

/// What a start-host run reported, for [`set_status_after_start_host`].
#[derive(Debug, Clone, Copy)]
pub struct StartHostReport<'a> {
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub output: &'a str,
    /// The assignment the run was for (`lablink_wire::assignment_key`); `None` from
    /// daemons that do not say (the current assignment is meant).
    pub assignment: Option<&'a str>,
}

/// The assignment key of a row, computed in SQL exactly as `lablink_wire::assignment_key`
/// does (each part's byte length as 8 big-endian bytes, then its UTF-8 bytes); NULL
/// when the row has no assignment. A test holds the two together.
const ROW_ASSIGNMENT_KEY: &str = "encode(sha256(
        int8send(octet_length(hostname)::int8) || convert_to(hostname, 'UTF8') ||
        int8send(octet_length(pin)::int8) || convert_to(pin, 'UTF8') ||
        int8send(octet_length(crd_command)::int8) || convert_to(crd_command, 'UTF8')), 'hex')";

/// [`set_status`], recording in the same statement how the start-host run this report
/// follows ended (when `start_host` is given; the last outcome stays otherwise) and,
/// when `reset_done` names the pending reset, that the reset is done (the VM rejoins the
/// pool).
///
/// An outcome is recorded, and acknowledges the assignment (the holder stops handing it
/// over), only when it names the VM's current assignment: the outcome of a code the
/// participant has since replaced settles nothing.
pub async fn set_status_after_start_host(
    client: &Client,
    hostname: &Hostname,
    status: VmStatus,
    reason: Option<&str>,
    start_host: Option<StartHostReport<'_>>,
    reset_done: Option<i64>,
) -> Result<bool, DbError> {
    let clip = |r: &str, n: usize| super::logs::without_nul(&r.chars().take(n).collect::<String>());
    let reason: Option<String> = reason.map(|r| clip(r, 1024));
    let (ok, code, output, key) = match start_host {
        Some(o) => (Some(o.ok), o.exit_code, Some(clip(o.output, 2000)), o.assignment),
        None => (None, None, None, None),
    };
    let sql = format!(
        "WITH cur AS (
            SELECT hostname, crd_command IS NOT NULL AS assigned,
                   $4::boolean IS NOT NULL AND ($7::text IS NULL OR $7 = {ROW_ASSIGNMENT_KEY}) AS this_run
            FROM vms WHERE hostname = $1 FOR UPDATE
         )
         UPDATE vms SET status = $2, status_reason = $3, updated_at = now(), last_seen_at = now(),
            start_host_ok = CASE WHEN cur.this_run THEN $4 ELSE start_host_ok END,
            start_host_exit_code = CASE WHEN cur.this_run THEN $5 ELSE start_host_exit_code END,
            start_host_output = CASE WHEN cur.this_run THEN $6 ELSE start_host_output END,
            start_host_at = CASE WHEN cur.this_run THEN now() ELSE start_host_at END,
            acknowledged_at = CASE WHEN cur.this_run AND cur.assigned THEN now() ELSE acknowledged_at END,
            reset_id = CASE WHEN $8::bigint IS NOT NULL AND reset_id = $8 THEN NULL ELSE reset_id END,
            reset_keep_files = CASE WHEN $8::bigint IS NOT NULL AND reset_id = $8 THEN FALSE ELSE reset_keep_files END
         FROM cur WHERE vms.hostname = cur.hostname"
    );
    let n = client
        .execute(
            &sql,
            &[
                &hostname.as_str(),
                &status.as_str(),
                &reason,
                &ok,
                &code,
                &output,
                &key,
                &reset_done,
            ],
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

/// VMs that need the admin, counted for the deployment's alarms (the holder logs these
/// every minute, docs/operations.md "Alarms").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckVms {
    /// In `error`: a failed bootstrap, image pull or startup script (under `fail`), or a
    /// bootstrap the holder gave up on.
    pub error: i64,
    /// Still `initializing` `deadline` after launch although the daemon reports (its image
    /// pull or startup script has not finished). The ones that never reported are in
    /// `error` instead ([`expire_bootstraps`]).
    pub initializing_overdue: i64,
}

pub async fn stuck_counts(client: &Client, deadline: std::time::Duration) -> Result<StuckVms, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'error'),
                    count(*) FILTER (WHERE status = 'initializing'
                                       AND created_at < now() - make_interval(secs => $1))
             FROM vms",
            &[&(deadline.as_secs_f64())],
        )
        .await?;
    Ok(StuckVms {
        error: row.get(0),
        initializing_overdue: row.get(1),
    })
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

/// The columns [`pending_from_row`] reads, in its order.
const PENDING_COLUMNS: &str =
    "crd_command, pin, assigned_at, delivered_at, acknowledged_at, reset_id, reset_keep_files";

/// What a VM's poll must be handed, from the [`PENDING_COLUMNS`] starting at `at`.
///
/// `acknowledged`: the poll comes from a daemon that acknowledges (it presented its
/// credential, so it reports start-host's outcome naming the assignment): the
/// assignment stays pending until that report. A classic credential-less client keeps
/// the classic rule: handed over once (`delivered_at`), and is never told to reset.
/// A pending reset comes first: the seat was released, the workspace must be new
/// before anything else runs in it.
fn pending_from_row(
    r: &tokio_postgres::Row,
    at: usize,
    acknowledged: bool,
) -> Result<Option<Pending>, DbError> {
    if acknowledged && let Some(id) = r.get::<_, Option<i64>>(at + 5) {
        return Ok(Some(Pending::Reset {
            id,
            keep_files: r.get(at + 6),
        }));
    }
    let settled = if acknowledged {
        r.get::<_, Option<DateTime<Utc>>>(at + 4).is_some()
    } else {
        r.get::<_, Option<DateTime<Utc>>>(at + 3).is_some()
    };
    match (
        r.get::<_, Option<String>>(at),
        r.get::<_, Option<String>>(at + 1),
        r.get::<_, Option<DateTime<Utc>>>(at + 2),
    ) {
        (Some(command), Some(pin), Some(assigned_at)) if !settled => {
            Ok(Some(Pending::Assignment(PendingAssignment {
                command,
                pin: Pin::parse(&pin).map_err(|e| corrupt("pin", e))?,
                assigned_at,
            })))
        }
        _ => Ok(None),
    }
}

/// What `hostname`'s poll must be handed now, if anything (see [`pending_from_row`]).
/// The holder asks this before it waits and after every reconnect (the "lost wake-up"
/// fix).
pub async fn pending_for(
    client: &Client,
    hostname: &Hostname,
    acknowledged: bool,
) -> Result<Option<Pending>, DbError> {
    let sql = format!("SELECT {PENDING_COLUMNS} FROM vms WHERE hostname = $1");
    match client.query_opt(&sql, &[&hostname.as_str()]).await? {
        Some(r) => pending_from_row(&r, 0, acknowledged),
        None => Ok(None),
    }
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
/// hash (`None` for legacy rows without one) and what the poll must be handed, if
/// anything (see [`pending_from_row`]). `Ok(None)` for an unknown VM.
pub async fn startup_lookup(
    client: &Client,
    hostname: &Hostname,
    acknowledged: bool,
) -> Result<Option<(Option<SecretHash>, Option<Pending>)>, DbError> {
    let sql = format!("SELECT credential_hash, {PENDING_COLUMNS} FROM vms WHERE hostname = $1");
    let Some(r) = client.query_opt(&sql, &[&hostname.as_str()]).await? else {
        return Ok(None);
    };
    let hash = r
        .get::<_, Option<Vec<u8>>>(0)
        .and_then(|b| SecretHash::from_slice(&b));
    Ok(Some((hash, pending_from_row(&r, 1, acknowledged)?)))
}

/// What many VMs' polls must be handed, in one statement (the holder's re-check of
/// every waiter after its listening connection came back). Each waiter says whether it
/// acknowledges (see [`pending_from_row`]).
pub async fn pending_for_many(
    client: &Client,
    waiters: &[(Hostname, bool)],
) -> Result<Vec<(Hostname, Pending)>, DbError> {
    let names: Vec<&str> = waiters.iter().map(|(h, _)| h.as_str()).collect();
    let acks: Vec<bool> = waiters.iter().map(|(_, a)| *a).collect();
    let sql = format!(
        "SELECT w.hostname, w.ack, {PENDING_COLUMNS} FROM unnest($1::text[], $2::bool[]) AS w(hostname, ack)
         JOIN vms USING (hostname)
         WHERE crd_command IS NOT NULL OR (w.ack AND reset_id IS NOT NULL)"
    );
    let rows = client.query(&sql, &[&names, &acks]).await?;
    // One bad row must not keep every other waiter from its assignment: skip and log it.
    Ok(rows
        .iter()
        .filter_map(|r| {
            let found = host(r.get(0)).and_then(|h| Ok(pending_from_row(r, 2, r.get(1))?.map(|p| (h, p))));
            match found {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(error = %e, "skipping an invalid assignment row");
                    None
                }
            }
        })
        .collect())
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

/// Remove one VM (and, by cascade, its logs). Returns whether it existed.
pub async fn delete_vm(client: &Client, hostname: &Hostname) -> Result<bool, DbError> {
    let n = client
        .execute("DELETE FROM vms WHERE hostname = $1", &[&hostname.as_str()])
        .await?;
    Ok(n == 1)
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
