//! Login throttling for the admin: attempts counted per key in a fixed window (each
//! counted before its password is checked; a success is taken back).
//! Keys are a client address (`ip:<addr>`) and the user name (`user:<name>`), so one
//! address is stopped quickly while the admin can still log in from elsewhere; the
//! per-user limit is higher and slows a guesser spread over many addresses.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;

use super::DbError;

/// One throttled key and its limit within the window.
#[derive(Debug, Clone)]
pub struct Limit {
    pub key: String,
    pub max_failures: i32,
}

/// Count this attempt against every key, before the password is checked, and say
/// whether it may go ahead: `Some(when the window ends)` when any key is now over its
/// limit. One statement: concurrent attempts each take their own count (the upsert locks
/// the key's row), so a parallel burst gets at most the limit checked, never more (a
/// check-then-count would let every attempt of a burst through the check). A key whose
/// window has passed starts a new one.
pub async fn reserve_attempt(
    client: &Client,
    limits: &[Limit],
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let keys: Vec<&str> = limits.iter().map(|l| l.key.as_str()).collect();
    let maxes: Vec<i32> = limits.iter().map(|l| l.max_failures).collect();
    let row = client
        .query_one(
            "WITH counted AS (
                INSERT INTO admin_login_failures (key, failures, window_start)
                SELECT k, 1, $3 FROM unnest($1::text[]) AS k
                ON CONFLICT (key) DO UPDATE SET
                    failures = CASE WHEN admin_login_failures.window_start + make_interval(secs => $2::float8) > $3
                                    THEN admin_login_failures.failures + 1 ELSE 1 END,
                    window_start = CASE WHEN admin_login_failures.window_start + make_interval(secs => $2::float8) > $3
                                        THEN admin_login_failures.window_start ELSE $3 END
                RETURNING key, failures, window_start
             )
             SELECT max(c.window_start + make_interval(secs => $2::float8))
             FROM counted c JOIN unnest($1::text[], $4::int[]) AS l(key, max_failures) USING (key)
             WHERE c.failures > l.max_failures",
            &[&keys, &pg_interval(window), &now, &maxes],
        )
        .await?;
    Ok(row.get(0))
}

/// A successful login takes back the attempt [`reserve_attempt`] counted against `key`
/// (the user's: a success is not a failure; a guesser elsewhere is still counted).
pub async fn forgive_attempt(client: &Client, key: &str) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE admin_login_failures SET failures = GREATEST(failures - 1, 0) WHERE key = $1",
            &[&key],
        )
        .await?;
    Ok(())
}

/// A successful login clears its address's failures (not the user's: a guesser
/// elsewhere is still counted).
pub async fn clear_failures(client: &Client, key: &str) -> Result<(), DbError> {
    client
        .execute("DELETE FROM admin_login_failures WHERE key = $1", &[&key])
        .await?;
    Ok(())
}

fn pg_interval(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Record a new admin session (`id_hash`: the SHA-256 of the cookie's random id).
pub async fn create_session(
    client: &Client,
    id_hash: &[u8; 32],
    user: &str,
    epoch: &str,
    address: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let address: String = address.chars().take(64).collect();
    client
        .execute(
            "INSERT INTO admin_sessions (id_hash, admin_user, secret_epoch, address, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&id_hash.as_slice(), &user, &epoch, &address, &expires_at],
        )
        .await?;
    Ok(())
}

/// Whether the session is live: recorded for this user, not ended, not expired, and
/// issued under the admin secret in force (`epoch`).
pub async fn session_live(
    client: &Client,
    id_hash: &[u8; 32],
    user: &str,
    epoch: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM admin_sessions WHERE id_hash = $1 AND admin_user = $2
                 AND secret_epoch = $3 AND ended_at IS NULL AND expires_at > $4)",
            &[&id_hash.as_slice(), &user, &epoch, &now],
        )
        .await?;
    Ok(row.get(0))
}

/// End one session (logout). Ended rows are kept a day for the record, then deleted
/// here, with the expired ones, so the table stays small.
pub async fn end_session(client: &Client, id_hash: &[u8; 32]) -> Result<(), DbError> {
    client
        .execute(
            "WITH ended AS (UPDATE admin_sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL)
             DELETE FROM admin_sessions WHERE expires_at < now() - interval '1 day'
                 OR ended_at < now() - interval '1 day'",
            &[&id_hash.as_slice()],
        )
        .await?;
    Ok(())
}

/// End every live session of `user` ("log out everywhere"); how many were live.
pub async fn end_all_sessions(client: &Client, user: &str) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "UPDATE admin_sessions SET ended_at = now() WHERE admin_user = $1 AND ended_at IS NULL
             AND expires_at > now()",
            &[&user],
        )
        .await?)
}

/// Live sessions of `user` (the dashboard says how many).
pub async fn live_sessions(client: &Client, user: &str, epoch: &str) -> Result<i64, DbError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM admin_sessions WHERE admin_user = $1 AND secret_epoch = $2
             AND ended_at IS NULL AND expires_at > now()",
            &[&user, &epoch],
        )
        .await?;
    Ok(row.get(0))
}
