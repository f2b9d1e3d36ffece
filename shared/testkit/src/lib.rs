//! Test support shared by every crate's tests.
//!
//! [`TestDb::new`] gives each test its own fresh, randomly named, migrated database.
//! With `DATABASE_URL` set, databases are made on that server; otherwise ONE throwaway
//! cluster is started from the system's Postgres binaries for the whole process (or,
//! through the `with-postgres` binary, for a whole `cargo test` run) and removed when
//! the process that started it exits, however it exits.

pub mod fixtures;
pub mod moto;
pub mod pg;

use std::sync::OnceLock;

use lablink_db::DbConfig;
use rand::Rng;

/// The server tests create their databases on.
fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            let cluster =
                pg::Cluster::start().unwrap_or_else(|e| panic!("cannot start a test Postgres: {e:#}"));
            let url = cluster.admin_url();
            // Lives until the process exits; its watchdog removes it then.
            std::mem::forget(cluster);
            url
        }
    })
}

/// A fresh database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub config: DbConfig,
}

impl TestDb {
    /// Create and migrate a new database.
    pub async fn new() -> Self {
        let admin = admin_url().to_owned();
        let name = format!("lablink_test_{:016x}", rand::thread_rng().r#gen::<u64>());
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server {admin}: {e}"));
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        drop(client);
        let _ = task.await;
        let url = with_dbname(&admin, &name);
        let config = DbConfig::from_url(&url).expect("a valid test database URL");
        let mut client = config.connect().await.expect("connect to the test database");
        lablink_db::migrate(&mut client)
            .await
            .expect("migrations apply to a fresh database");
        Self { name, url, config }
    }

    /// A new connection to this database (its connection task runs on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.config.connect().await.expect("connect to the test database")
    }
}

/// Replace the database name in a `postgres://` URL.
pub fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_dbname("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(with_dbname("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_dbname("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
