//! Login throttling for the admin: failed attempts counted per key in a fixed window.
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

/// When a throttled key may try again, if any key is over its limit now.
pub async fn throttled_until(
    client: &Client,
    limits: &[Limit],
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let keys: Vec<&str> = limits.iter().map(|l| l.key.as_str()).collect();
    let maxes: Vec<i32> = limits.iter().map(|l| l.max_failures).collect();
    let row = client
        .query_one(
            "SELECT max(f.window_start + make_interval(secs => $3::float8))
             FROM admin_login_failures f
             JOIN unnest($1::text[], $2::int[]) AS l(key, max_failures) USING (key)
             WHERE f.failures >= l.max_failures AND f.window_start + make_interval(secs => $3::float8) > $4",
            &[&keys, &maxes, &pg_interval(window), &now],
        )
        .await?;
    Ok(row.get(0))
}

/// Count one failure against every key (a key whose window has passed starts a new one).
pub async fn record_failure(
    client: &Client,
    limits: &[Limit],
    window: Duration,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let keys: Vec<&str> = limits.iter().map(|l| l.key.as_str()).collect();
    client
        .execute(
            "INSERT INTO admin_login_failures (key, failures, window_start)
             SELECT k, 1, $3 FROM unnest($1::text[]) AS k
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN admin_login_failures.window_start + make_interval(secs => $2::float8) > $3
                                 THEN admin_login_failures.failures + 1 ELSE 1 END,
                 window_start = CASE WHEN admin_login_failures.window_start + make_interval(secs => $2::float8) > $3
                                     THEN admin_login_failures.window_start ELSE $3 END",
            &[&keys, &pg_interval(window), &now],
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
