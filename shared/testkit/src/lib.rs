//! Test support shared by every crate's tests.
//!
//! [`TestDb::new`] gives each test its own fresh, randomly named, migrated database;
//! [`TestDb::with_roles`] one set up as a deployment's (roles, migrations as the owner
//! role, grants), to log in to as each runtime role with [`TestDb::config_as`].
//! With `DATABASE_URL` set, databases are made on that server; otherwise ONE throwaway
//! cluster is started from the system's Postgres binaries for the whole process (or,
//! through the `with-postgres` binary, for a whole `cargo test` run) and removed when
//! the process that started it exits, however it exits.

pub mod docker;
pub mod fixtures;
pub mod moto;
pub mod pg;

use std::sync::OnceLock;

use lablink_db::DbConfig;
use rand::Rng;

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

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
    /// Create and migrate a new database (as the server's admin user, which owns it all,
    /// as the local runner does).
    pub async fn new() -> Self {
        let db = Self::create(None).await;
        let mut client = db.client().await;
        lablink_db::migrate(&mut client)
            .await
            .expect("migrations apply to a fresh database");
        db
    }

    /// A new database set up as a deployment's is: owned by a master user like RDS's
    /// (`CREATEROLE`, not a superuser), which runs [`lablink_db::roles::setup`] (roles,
    /// migrations as the owner role, grants). [`TestDb::config_as`] then logs in as a
    /// runtime role. The cluster gets an `rds_iam` role as RDS has, so the setup's grant
    /// of it runs too. Logins as these roles carry no password: the server must trust
    /// local logins (the testkit's own cluster does).
    pub async fn with_roles() -> Self {
        let db = Self::empty().await;
        let mut master = db
            .config_as(MASTER)
            .connect()
            .await
            .expect("log in as the test master user");
        lablink_db::roles::setup(&mut master)
            .await
            .expect("the setup runs on a fresh database");
        db
    }

    /// A new database with nothing in it, owned by [`MASTER`] (a master user like RDS's).
    pub async fn empty() -> Self {
        Self::create(Some(MASTER)).await
    }

    async fn create(owner: Option<&str>) -> Self {
        let admin = admin_url().to_owned();
        let name = format!("lablink_test_{:016x}", rand::thread_rng().r#gen::<u64>());
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server {admin}: {e}"));
        let task = tokio::spawn(conn);
        let mut sql = format!("CREATE DATABASE {name}");
        if let Some(owner) = owner {
            for (role, attributes) in [(MASTER, "LOGIN CREATEROLE CREATEDB"), ("rds_iam", "NOLOGIN")] {
                create_role(&client, role, attributes).await;
            }
            sql.push_str(&format!(" OWNER {owner}"));
        }
        client
            .batch_execute(&sql)
            .await
            .expect("create the test database");
        drop(client);
        let _ = task.await;
        let url = with_dbname(&admin, &name);
        let config = DbConfig::from_url(&url).expect("a valid test database URL");
        Self { name, url, config }
    }

    /// A new connection to this database (its connection task runs on the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        self.config.connect().await.expect("connect to the test database")
    }

    /// This database, logged in as `role` (no password).
    pub fn config_as(&self, role: &str) -> DbConfig {
        DbConfig::from_url(&with_user(&self.url, role)).expect("a valid test database URL")
    }
}

/// The master user of [`TestDb::with_roles`] databases: `CREATEROLE`, owner of the
/// database, no superuser, like RDS's.
pub const MASTER: &str = "lablink_test_master";

/// Roles are cluster-wide and tests run in parallel: another test may create the same
/// role between the check and the `CREATE`, which is fine.
async fn create_role(client: &tokio_postgres::Client, role: &str, attributes: &str) {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await
        .expect("look up a role")
        .get(0);
    if exists {
        return;
    }
    if let Err(e) = client
        .batch_execute(&format!("CREATE ROLE {role} {attributes}"))
        .await
    {
        use tokio_postgres::error::SqlState;
        let raced =
            e.code() == Some(&SqlState::DUPLICATE_OBJECT) || e.code() == Some(&SqlState::UNIQUE_VIOLATION);
        assert!(raced, "create role {role}: {e}");
    }
}

/// Replace the user (and drop the password) of a `postgres://` URL.
pub fn with_user(url: &str, user: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{}{user}@{host}", &url[..scheme_end])
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
            with_user("postgres://u:p@h:1/db?a=b", "r"),
            "postgres://r@h:1/db?a=b"
        );
        assert_eq!(with_user("postgres://h/db", "r"), "postgres://r@h/db");
        assert_eq!(
            with_dbname("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
