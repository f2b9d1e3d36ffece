//! The workshop's gate as stored (the admin's settings; the rules are
//! `lablink_core::workshop`) and the per-address count of new seats.

use chrono::{DateTime, Duration, Utc};
use lablink_core::workshop::{Gate, ParticipantList};
use tokio_postgres::Client;

use super::DbError;

/// The admin's settings, or `None` while the deployment's defaults apply.
pub async fn stored_gate(client: &Client) -> Result<Option<Gate>, DbError> {
    let row = client
        .query_opt(
            "SELECT access_code, participants, seats_per_address, window_minutes
             FROM workshop_settings WHERE id = 1",
            &[],
        )
        .await?;
    Ok(row.map(|r| Gate {
        access_code: r.get(0),
        participants: r
            .get::<_, Option<Vec<String>>>(1)
            .map(ParticipantList::from_stored),
        seats_per_address: r.get::<_, i32>(2) as u32,
        window_minutes: r.get::<_, i32>(3) as u32,
    }))
}

/// The gate in force: the admin's, else `defaults`.
pub async fn gate(client: &Client, defaults: &Gate) -> Result<Gate, DbError> {
    Ok(stored_gate(client).await?.unwrap_or_else(|| defaults.clone()))
}

/// Store the admin's settings (they replace the deployment's defaults until reset).
pub async fn save_gate(client: &Client, gate: &Gate, by: &str) -> Result<(), DbError> {
    let participants: Option<Vec<String>> = gate
        .participants
        .as_ref()
        .filter(|p| !p.is_empty())
        .map(|p| p.entries().to_vec());
    client
        .execute(
            "INSERT INTO workshop_settings (id, access_code, participants, seats_per_address, window_minutes, updated_by, updated_at)
             VALUES (1, $1, $2, $3, $4, $5, now())
             ON CONFLICT (id) DO UPDATE SET access_code = EXCLUDED.access_code,
                 participants = EXCLUDED.participants, seats_per_address = EXCLUDED.seats_per_address,
                 window_minutes = EXCLUDED.window_minutes, updated_by = EXCLUDED.updated_by,
                 updated_at = EXCLUDED.updated_at",
            &[
                &gate.access_code,
                &participants,
                &(gate.seats_per_address as i32),
                &(gate.window_minutes as i32),
                &by,
            ],
        )
        .await?;
    Ok(())
}

/// Back to the deployment's defaults.
pub async fn reset_gate(client: &Client) -> Result<(), DbError> {
    client.execute("DELETE FROM workshop_settings", &[]).await?;
    Ok(())
}

/// Count one new seat for `address` before assigning, atomically (one upsert: a
/// parallel burst from one address gets at most `limit` through, never more).
/// `Some(when the window ends)` when the address is over its limit.
pub async fn reserve_seat(
    client: &Client,
    address: &str,
    limit: u32,
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let address: String = address.chars().take(64).collect();
    let secs = window.num_seconds() as f64;
    let row = client
        .query_one(
            "INSERT INTO seat_request_windows AS w (address, requests, window_start) VALUES ($1, 1, $3)
             ON CONFLICT (address) DO UPDATE SET
                 requests = CASE WHEN w.window_start + make_interval(secs => $2) > $3 THEN w.requests + 1 ELSE 1 END,
                 window_start = CASE WHEN w.window_start + make_interval(secs => $2) > $3 THEN w.window_start ELSE $3 END
             RETURNING requests, window_start + make_interval(secs => $2)",
            &[&address, &secs, &now],
        )
        .await?;
    let requests: i32 = row.get(0);
    let ends: DateTime<Utc> = row.get(1);
    Ok((requests > limit as i32).then_some(ends))
}

/// Give back a reservation that did not become a new seat (the same email's own seat,
/// no free VM, a refusal).
pub async fn give_back_seat(client: &Client, address: &str) -> Result<(), DbError> {
    let address: String = address.chars().take(64).collect();
    client
        .execute(
            "UPDATE seat_request_windows SET requests = GREATEST(requests - 1, 0) WHERE address = $1",
            &[&address],
        )
        .await?;
    Ok(())
}
