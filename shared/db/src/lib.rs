//! Postgres: configuration, a lazily made connection that is re-made after it breaks,
//! embedded migrations, the roles and their grants (`roles`: the setup step that applies
//! the migrations on a deployed database), and the queries (one function each, in `vms`,
//! `logs` and their siblings).
//!
//! Lambdas keep one [`Db`] across invocations: nothing connects until the first query,
//! and a connection that died between invocations is replaced on the next call.

pub mod admin;
mod connect;
pub mod exports;
pub mod fleet;
pub mod logs;
pub mod roles;
pub mod seats;
pub mod vms;
pub mod workshop;

pub use connect::{Db, DbAuth, DbConfig, DbError, PgConnection};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Apply every pending migration, as the session's current role (which then owns what
/// they create). Safe to run concurrently from several processes: an advisory lock
/// serializes them, and every statement is versioned. A deployed database is migrated
/// by [`roles::setup`] only (as the owner role); the local runner and the tests call
/// this directly.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Option<i32>, DbError> {
    // A session-level advisory lock keeps two processes from racing on a fresh
    // database (both would try to create refinery's history table).
    client.batch_execute("SELECT pg_advisory_lock(7262541)").await?;
    let result = embedded::migrations::runner().run_async(client).await;
    client.batch_execute("SELECT pg_advisory_unlock(7262541)").await?;
    result.map_err(|e| DbError::Migrate(e.to_string()))?;
    schema_version(client).await
}

/// The newest applied migration version, or `None` on an empty database.
pub async fn schema_version(client: &tokio_postgres::Client) -> Result<Option<i32>, DbError> {
    let row = client
        .query_opt("SELECT max(version) FROM refinery_schema_history", &[])
        .await;
    match row {
        Ok(Some(r)) => Ok(r.get::<_, Option<i32>>(0)),
        Ok(None) => Ok(None),
        // The history table does not exist yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The newest migration this build knows.
pub fn latest_known_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}
