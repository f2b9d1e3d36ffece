//! Append-only VM log lines. Appending costs the same whatever a VM already has
//! (classic read, appended and rewrote the whole log), and a redelivered batch changes
//! nothing: `(hostname, event_id)` is unique and duplicates are skipped.
//!
//! Each VM keeps at most a cap of lines (default [`DEFAULT_MAX_LINES_PER_VM`]): past it
//! the oldest are deleted and counted (`vm_log_stats`), so one noisy or hostile VM
//! cannot fill the database. Trimming costs what was just added, not what is stored.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::DbError;
use lablink_core::domain::Hostname;

/// One line to store. `event_id` is CloudWatch's event id, or one the sender made up
/// that is stable across its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub event_id: String,
    pub logged_at: DateTime<Utc>,
    pub message: String,
}

/// A stored line; `cursor` orders lines and is what readers pass back as `after`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredLine {
    pub cursor: i64,
    pub event_id: String,
    pub logged_at: DateTime<Utc>,
    pub message: String,
}

/// Lines one VM keeps (about 40 MB of typical lines; a workshop VM writes a few thousand).
pub const DEFAULT_MAX_LINES_PER_VM: i64 = 200_000;

/// Append a batch under the default cap: see [`append_capped`].
pub async fn append(client: &Client, hostname: &Hostname, lines: &[LogLine]) -> Result<Option<u64>, DbError> {
    append_capped(client, hostname, lines, DEFAULT_MAX_LINES_PER_VM).await
}

/// Append a batch in one round trip (two when the VM goes past `cap`: its oldest lines
/// are then deleted and counted as dropped). Returns `None` when the VM is unknown
/// (nothing is written), else how many lines were new.
pub async fn append_capped(
    client: &Client,
    hostname: &Hostname,
    lines: &[LogLine],
    cap: i64,
) -> Result<Option<u64>, DbError> {
    // Postgres text cannot hold NUL; a log line may (binary output), so it is replaced.
    let ids: Vec<String> = lines.iter().map(|l| without_nul(&l.event_id)).collect();
    let times: Vec<DateTime<Utc>> = lines.iter().map(|l| l.logged_at).collect();
    let messages: Vec<String> = lines.iter().map(|l| without_nul(&l.message)).collect();
    // The VM check and the insert are one statement: `vm` is empty for an unknown host,
    // so nothing is inserted and `known` says why.
    let row = client
        .query_one(
            "WITH vm AS (SELECT hostname FROM vms WHERE hostname = $1),
                  ins AS (
                      INSERT INTO vm_log_lines (hostname, event_id, logged_at, message)
                      SELECT vm.hostname, t.e, t.l, t.m
                      FROM vm, unnest($2::text[], $3::timestamptz[], $4::text[]) WITH ORDINALITY AS t(e, l, m, n)
                      ORDER BY t.n
                      ON CONFLICT (hostname, event_id) DO NOTHING
                      RETURNING 1),
                  counted AS (
                      INSERT INTO vm_log_stats AS s (hostname, stored)
                      SELECT vm.hostname, (SELECT count(*) FROM ins) FROM vm
                      ON CONFLICT (hostname) DO UPDATE SET stored = s.stored + EXCLUDED.stored
                      RETURNING stored)
             SELECT EXISTS (SELECT 1 FROM vm), (SELECT count(*) FROM ins), (SELECT stored FROM counted)",
            &[&hostname.as_str(), &ids, &times, &messages],
        )
        .await?;
    let known: bool = row.get(0);
    let inserted: i64 = row.get(1);
    let stored: Option<i64> = row.get(2);
    if let Some(excess) = stored.map(|n| n - cap).filter(|e| *e > 0) {
        // The oldest `excess` lines go (by the (hostname, id) index: as many rows as
        // were just added, whatever the VM holds).
        client
            .execute(
                "WITH gone AS (
                     DELETE FROM vm_log_lines WHERE id IN (
                         SELECT id FROM vm_log_lines WHERE hostname = $1 ORDER BY id LIMIT $2)
                     RETURNING 1)
                 UPDATE vm_log_stats SET stored = stored - (SELECT count(*) FROM gone),
                                         dropped = dropped + (SELECT count(*) FROM gone)
                 WHERE hostname = $1",
                &[&hostname.as_str(), &excess],
            )
            .await?;
    }
    Ok(known.then_some(inserted as u64))
}

/// Lines a VM has had dropped by the cap (oldest first).
pub async fn dropped(client: &Client, hostname: &Hostname) -> Result<i64, DbError> {
    let row = client
        .query_opt(
            "SELECT dropped FROM vm_log_stats WHERE hostname = $1",
            &[&hostname.as_str()],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

pub(crate) fn without_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Lines after `after` (exclusive), oldest first, at most `limit`.
pub async fn read_after(
    client: &Client,
    hostname: &Hostname,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredLine>, DbError> {
    let rows = client
        .query(
            "SELECT id, event_id, logged_at, message FROM vm_log_lines
             WHERE hostname = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&hostname.as_str(), &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredLine {
            cursor: r.get(0),
            event_id: r.get(1),
            logged_at: r.get(2),
            message: r.get(3),
        })
        .collect())
}

/// Whether the VM has any stored line (for the classic 503 "still initializing").
pub async fn has_lines(client: &Client, hostname: &Hostname) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM vm_log_lines WHERE hostname = $1)",
            &[&hostname.as_str()],
        )
        .await?;
    Ok(row.get(0))
}
