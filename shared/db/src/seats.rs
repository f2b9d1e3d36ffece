//! A participant's seat after the assignment: fresh codes sent to the same VM (with
//! per-seat limits), the unguessable token of the participant's live status page, and
//! the admin's actions on one VM (release, reassign, the record of a replace).
//!
//! Owns the seat's life as docs/operations.md tells it: assigned → delivered →
//! connected or refused (a fresh code starts again at assigned) → released or
//! reassigned. Each write is one statement; the refusals are told apart afterwards by a
//! read, for the message only (the write's own conditions are what keep it safe).
//! Must not: send anything to a VM (the row changes fire the notifications the holder
//! relays) or know about HTTP.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lablink_core::credential::Secret;
use lablink_core::domain::{CrdCommand, Email, Hostname, Pin};
use tokio_postgres::Client;

use super::DbError;

/// How often a seat may take a fresh code: one per `min_interval` (at once when the
/// last one was refused: the participant is waiting with a new one), `max_changes` in all
/// (the first assignment is not counted). Codes expire within minutes, so a participant
/// needs a few; the limit keeps a script from re-registering a desktop in a loop.
#[derive(Debug, Clone, Copy)]
pub struct CodeLimits {
    pub min_interval: Duration,
    pub max_changes: i32,
}

impl Default for CodeLimits {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(20),
            max_changes: 10,
        }
    }
}

/// How the participant showed the seat is theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The start page: the email alone. Anyone who knows the email can send it, so it
    /// may not re-register a desktop that is connected (that would hand the desktop to
    /// another Google account): only while the code is on its way or was refused.
    Email,
    /// The seat's page: its unguessable token. Any time, within the limits (the way to
    /// move a connected desktop to another Google account).
    SeatToken,
}

/// What became of a fresh code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeChange {
    /// Stored with a fresh PIN; the holder hands it to the VM, which runs start-host
    /// with it (a re-registration replaces the earlier one).
    Sent { pin: Pin },
    /// The seat already has exactly this code: nothing changed.
    Unchanged { pin: Pin },
    /// The last code was sent less than the interval ago.
    TooSoon { wait_seconds: u64 },
    /// The seat has had all its fresh codes.
    TooMany { max: i32 },
    /// The VM is being reset after a release: no code can reach it now.
    Resetting,
    /// The desktop is connected, and only the email was shown ([`Proof::Email`]).
    Connected,
    /// This email does not hold this VM (any more).
    NotYours,
}

/// Store `command` as `email`'s fresh code on `hostname`, with `pin` (a fresh PIN: the
/// one the new registration is made with), within `limits`, as far as `proof` allows.
pub async fn send_code(
    client: &Client,
    hostname: &Hostname,
    email: &str,
    command: &CrdCommand,
    pin: &Pin,
    limits: CodeLimits,
    proof: Proof,
) -> Result<CodeChange, DbError> {
    let normalized = command.normalized();
    let interval = limits.min_interval.as_secs_f64();
    let sent = client
        .query_opt(
            "UPDATE vms SET crd_command = $3, pin = $4, assigned_at = now(), delivered_at = NULL,
                    acknowledged_at = NULL, code_changes = code_changes + 1, code_changed_at = now(),
                    updated_at = now()
             WHERE hostname = $1 AND user_email = $2 AND crd_command IS DISTINCT FROM $3
               AND reset_id IS NULL AND code_changes < $5
               AND (code_changed_at IS NULL OR code_changed_at <= now() - make_interval(secs => $6)
                    OR (acknowledged_at IS NOT NULL AND start_host_ok = FALSE))
               AND ($7 OR acknowledged_at IS NULL OR start_host_ok IS NOT TRUE)
             RETURNING pin",
            &[
                &hostname.as_str(),
                &email,
                &normalized,
                &pin.as_str(),
                &limits.max_changes,
                &interval,
                &(proof == Proof::SeatToken),
            ],
        )
        .await?;
    if sent.is_some() {
        return Ok(CodeChange::Sent { pin: pin.clone() });
    }
    // Refused: say why (a concurrent change may have moved things on; the answer is
    // still one of the true reasons at the time of this read).
    let row = client
        .query_opt(
            "SELECT user_email = $2, crd_command IS NOT DISTINCT FROM $3, pin, reset_id IS NOT NULL,
                    code_changes,
                    ceil(EXTRACT(EPOCH FROM (code_changed_at + make_interval(secs => $4) - now())))::float8,
                    acknowledged_at IS NOT NULL AND start_host_ok IS TRUE
             FROM vms WHERE hostname = $1",
            &[&hostname.as_str(), &email, &normalized, &interval],
        )
        .await?;
    let Some(r) = row else {
        return Ok(CodeChange::NotYours);
    };
    if !r.get::<_, Option<bool>>(0).unwrap_or(false) {
        return Ok(CodeChange::NotYours);
    }
    if r.get::<_, bool>(1) {
        let pin = r.get::<_, Option<&str>>(2).unwrap_or_default();
        return Ok(CodeChange::Unchanged {
            pin: Pin::parse(pin).map_err(|e| DbError::Corrupt(format!("pin: {e}")))?,
        });
    }
    if r.get::<_, bool>(3) {
        return Ok(CodeChange::Resetting);
    }
    if proof == Proof::Email && r.get::<_, bool>(6) {
        return Ok(CodeChange::Connected);
    }
    if r.get::<_, i32>(4) >= limits.max_changes {
        return Ok(CodeChange::TooMany {
            max: limits.max_changes,
        });
    }
    let wait = r.get::<_, Option<f64>>(5).unwrap_or(1.0).max(1.0);
    Ok(CodeChange::TooSoon {
        wait_seconds: wait as u64,
    })
}

/// A new status-page token for `email`'s seat on `hostname`. The token is returned once
/// (for the success page's link); only its SHA-256 is stored. Every success page gets
/// its own; earlier ones stay valid until the seat ends.
pub async fn issue_token(client: &Client, hostname: &Hostname, email: &Email) -> Result<Secret, DbError> {
    let token = Secret::generate();
    client
        .execute(
            "INSERT INTO seat_tokens (token_hash, hostname, email) VALUES ($1, $2, $3)",
            &[&token.hash().as_bytes(), &hostname.as_str(), &email.as_str()],
        )
        .await?;
    Ok(token)
}

/// Where a seat stands, as its participant's page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeatState {
    /// The code is on its way to the VM, or start-host is running with it.
    Connecting,
    /// start-host registered the desktop with this code.
    Ready,
    /// start-host failed with this code (expired, mistyped, another account): a fresh
    /// one is needed.
    Refused,
    /// The admin released the seat.
    Released,
    /// The admin moved the seat to another participant.
    Reassigned,
    /// The VM was replaced or removed.
    Gone,
}

impl SeatState {
    /// The state's name, as serialized (the page's elements are named after it).
    pub fn as_str(self) -> &'static str {
        match self {
            SeatState::Connecting => "connecting",
            SeatState::Ready => "ready",
            SeatState::Refused => "refused",
            SeatState::Released => "released",
            SeatState::Reassigned => "reassigned",
            SeatState::Gone => "gone",
        }
    }
}

/// A seat as its token shows it: only this seat's own facts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeatView {
    pub state: SeatState,
    pub hostname: String,
    /// Shown while the seat is the participant's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The VM's own status while the code is on its way (an `error` there is worth
    /// telling the staff about).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_status: Option<String>,
    /// Fresh codes this seat may still take.
    pub codes_left: i32,
    /// The seat's email while the seat is the participant's (for sending a fresh code;
    /// never shown).
    #[serde(skip)]
    pub email: Option<String>,
    /// When the fleet is destroyed, while the seat is the participant's (the route
    /// shows it only within the notice before it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_ends_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The seat `token` names, or `None` for a token that was never issued (404: a wrong
/// token shows nothing).
pub async fn view(client: &Client, token: &str, limits: CodeLimits) -> Result<Option<SeatView>, DbError> {
    let hash = Secret::presented(token).hash();
    let row = client
        .query_opt(
            "SELECT t.hostname, t.ended, v.hostname IS NOT NULL, v.pin, v.crd_command IS NOT NULL,
                    v.status, v.acknowledged_at IS NOT NULL, v.start_host_ok,
                    v.credential_hash IS NULL, v.delivered_at IS NOT NULL, v.code_changes, t.email,
                    (SELECT f.ends_at FROM fleet_schedule f WHERE f.id = 1)
             FROM seat_tokens t
             LEFT JOIN vms v ON v.hostname = t.hostname AND v.user_email = t.email
             WHERE t.token_hash = $1",
            &[&hash.as_bytes()],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let hostname: String = r.get(0);
    let ended: Option<&str> = r.get(1);
    let held: bool = r.get(2);
    let state = match ended {
        Some("released") => SeatState::Released,
        Some("reassigned") => SeatState::Reassigned,
        Some(_) => SeatState::Gone,
        None if !held => SeatState::Gone,
        None => {
            let has_code: bool = r.get(4);
            let acknowledged: bool = r.get(6);
            // A classic client never reports start-host's outcome: handed over is all
            // that can be known.
            let classic_done =
                r.get::<_, Option<bool>>(8) == Some(true) && r.get::<_, Option<bool>>(9) == Some(true);
            match (
                has_code,
                acknowledged || classic_done,
                r.get::<_, Option<bool>>(7),
            ) {
                (false, _, _) => SeatState::Refused,
                (true, false, _) => SeatState::Connecting,
                (true, true, Some(false)) => SeatState::Refused,
                (true, true, _) => SeatState::Ready,
            }
        }
    };
    let mine = held && ended.is_none();
    Ok(Some(SeatView {
        state,
        hostname,
        pin: if mine { r.get(3) } else { None },
        vm_status: if mine { r.get(5) } else { None },
        codes_left: if mine {
            (limits.max_changes - r.get::<_, Option<i32>>(10).unwrap_or(0)).max(0)
        } else {
            0
        },
        email: if mine { r.get(11) } else { None },
        fleet_ends_at: if mine { r.get(12) } else { None },
    }))
}

/// What an admin's action on one VM came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Done {
        /// The participant who held the seat, if any.
        previous_email: Option<String>,
    },
    UnknownVm,
    /// The action does not apply (the message says why); nothing changed.
    Refused(String),
}

/// Release `hostname`'s seat: the seat columns are cleared, the participant's tokens
/// say "released", and a reset is ordered (the daemon starts a new workspace, removing
/// the Chrome Remote Desktop registration; the VM stays out of the pool until it
/// reports the reset done). A free VM may be released too (its workspace is reset).
/// One statement, recorded in `vm_actions` by `actor`.
pub async fn release(
    client: &Client,
    hostname: &Hostname,
    keep_files: bool,
    actor: &str,
) -> Result<ActionOutcome, DbError> {
    let row = client
        .query_opt(
            "WITH old AS (
                SELECT hostname, user_email, credential_hash IS NOT NULL AS resettable
                FROM vms WHERE hostname = $1 FOR UPDATE
             ), released AS (
                UPDATE vms SET user_email = NULL, crd_command = NULL, pin = NULL, assigned_at = NULL,
                       delivered_at = NULL, acknowledged_at = NULL, in_use = FALSE,
                       code_changes = 0, code_changed_at = NULL,
                       reset_id = nextval('vm_reset_number'), reset_keep_files = $2,
                       status = 'initializing', status_reason = 'resetting the workspace after a release',
                       updated_at = now()
                FROM old WHERE vms.hostname = old.hostname AND old.resettable
                RETURNING vms.reset_id
             ), ended AS (
                UPDATE seat_tokens SET ended = 'released' FROM old
                WHERE seat_tokens.hostname = old.hostname AND seat_tokens.email = old.user_email
                  AND seat_tokens.ended IS NULL AND EXISTS (SELECT 1 FROM released)
             ), recorded AS (
                INSERT INTO vm_actions (hostname, action, actor, keep_files, detail)
                SELECT $1, 'release', $3, $2,
                       concat_ws('; ', COALESCE('was ' || (SELECT user_email FROM old), 'no participant'),
                                 CASE WHEN $2 THEN 'files kept for the next export' ELSE 'files removed' END)
                FROM released
             ), told AS (
                SELECT pg_notify('vm_resets', json_build_object('HostName', $1::text, 'Reset', reset_id,
                                 'KeepFiles', $2::boolean)::text)
                FROM released
             )
             SELECT old.user_email, old.resettable, (SELECT count(*) FROM told) FROM old",
            &[&hostname.as_str(), &keep_files, &actor],
        )
        .await?;
    let Some(r) = row else {
        return Ok(ActionOutcome::UnknownVm);
    };
    if !r.get::<_, bool>(1) {
        return Ok(ActionOutcome::Refused(format!(
            "{hostname} runs a classic client (no VM credential), which cannot reset its workspace: replace it instead"
        )));
    }
    Ok(ActionOutcome::Done {
        previous_email: r.get(0),
    })
}

/// Move `hostname`'s seat to `email`: the desktop's files stay as they are (for a
/// mistyped email, or a participant taking over a neighbour's work), the old code and
/// PIN go; the new participant sends their own code from the start page, which
/// re-registers the desktop under their Google account with a fresh PIN (until then the
/// earlier registration stands). The old participant's tokens say "reassigned".
/// Refused when the VM has no participant or `email` holds a seat.
pub async fn reassign(
    client: &Client,
    hostname: &Hostname,
    email: &Email,
    actor: &str,
) -> Result<ActionOutcome, DbError> {
    let result = client
        .query_opt(
            "WITH old AS (
                SELECT hostname, user_email FROM vms WHERE hostname = $1 FOR UPDATE
             ), moved AS (
                UPDATE vms SET user_email = $2, crd_command = NULL, pin = NULL, assigned_at = NULL,
                       delivered_at = NULL, acknowledged_at = NULL,
                       code_changes = 0, code_changed_at = NULL, updated_at = now()
                FROM old WHERE vms.hostname = old.hostname AND old.user_email IS NOT NULL
                  AND old.user_email <> $2
                RETURNING 1
             ), ended AS (
                UPDATE seat_tokens SET ended = 'reassigned' FROM old
                WHERE seat_tokens.hostname = old.hostname AND seat_tokens.email = old.user_email
                  AND seat_tokens.ended IS NULL AND EXISTS (SELECT 1 FROM moved)
             ), recorded AS (
                INSERT INTO vm_actions (hostname, action, actor, detail)
                SELECT $1, 'reassign', $3, concat('from ', (SELECT user_email FROM old), ' to ', $2::text)
                FROM moved
             )
             SELECT old.user_email, EXISTS (SELECT 1 FROM moved) FROM old",
            &[&hostname.as_str(), &email.as_str(), &actor],
        )
        .await;
    let row = match result {
        Ok(row) => row,
        Err(e) => {
            let e = DbError::from(e);
            if e.is_unique_violation("vms_one_seat_per_email") {
                return Ok(ActionOutcome::Refused(format!(
                    "{email} already holds another VM: release that one first"
                )));
            }
            return Err(e);
        }
    };
    let Some(r) = row else {
        return Ok(ActionOutcome::UnknownVm);
    };
    let previous: Option<String> = r.get(0);
    if r.get::<_, bool>(1) {
        return Ok(ActionOutcome::Done {
            previous_email: previous,
        });
    }
    Ok(ActionOutcome::Refused(match previous {
        None => format!("{hostname} has no participant to move: the new participant can request a VM"),
        Some(_) => format!("{hostname} is {email}'s already"),
    }))
}

/// Record a replace ordered by `actor` (the job does the work): the participant's
/// tokens say "replaced" at once, since their VM is about to be terminated.
pub async fn record_replace(
    client: &Client,
    hostname: &Hostname,
    job_id: &str,
    actor: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "WITH ended AS (
                UPDATE seat_tokens SET ended = 'replaced'
                WHERE hostname = $1 AND ended IS NULL
             )
             INSERT INTO vm_actions (hostname, action, actor, detail)
             SELECT $1, 'replace', $3, concat('job ', $2::text, COALESCE('; was ' || user_email, ''))
             FROM vms WHERE hostname = $1",
            &[&hostname.as_str(), &job_id, &actor],
        )
        .await?;
    Ok(())
}

/// One recorded admin action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmAction {
    pub hostname: String,
    pub action: String,
    pub actor: String,
    pub detail: String,
    pub at: DateTime<Utc>,
}

/// The last `per_vm` actions of every VM, newest first.
pub async fn recent_actions(client: &Client, per_vm: i64) -> Result<Vec<VmAction>, DbError> {
    let rows = client
        .query(
            "SELECT hostname, action, actor, detail, at FROM (
                SELECT *, row_number() OVER (PARTITION BY hostname ORDER BY id DESC) AS n FROM vm_actions
             ) a WHERE n <= $1 ORDER BY hostname, id DESC",
            &[&per_vm],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| VmAction {
            hostname: r.get(0),
            action: r.get(1),
            actor: r.get(2),
            detail: r.get(3),
            at: r.get(4),
        })
        .collect())
}
