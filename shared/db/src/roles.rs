//! Who may do what in the database, and the setup step that makes it so.
//!
//! Three roles (docs/operations.md, "Database roles"):
//! - [`OWNER`] (`NOLOGIN`) owns the schema: migrations run as it (the setup's session
//!   switches to it with `SET ROLE`), so only it may create, alter or drop tables;
//! - [`APP`] (login, `rds_iam`): admin routes, VM routes, the holder, the provisioner and
//!   the log processor; reads and writes every table, creates nothing;
//! - [`PUBLIC`] (login, `rds_iam`): the routes anyone on the internet may call
//!   (participant pages, the health check, the admin login form); only what their
//!   statements need, table by table ([`PUBLIC_GRANTS`]).
//!
//! [`setup`] runs as the database's master user (on AWS: the holder image's
//! `lablink-holder setup-db`, before the holder starts): roles, migrations, grants; it is
//! idempotent and safe when several tasks, or several test databases of one cluster, run
//! it at once. It must not run as a runtime role, and nothing else grants privileges.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::DbError;

/// Owns every table, sequence and function; migrations run as it. Never logs in.
pub const OWNER: &str = "lablink_owner";
/// The runtime role of everything that is not reachable by anyone on the internet.
pub const APP: &str = "lablink_app";
/// The runtime role of the participant and public routes.
pub const PUBLIC: &str = "lablink_public";
/// The roles processes log in as (with IAM auth tokens on AWS).
pub const RUNTIME: [&str; 2] = [APP, PUBLIC];

/// Serializes two setups of one database (two holder tasks starting together).
const SETUP_LOCK: i64 = 7274552;

/// What [`PUBLIC`] may do to one table: the privileges' SQL, column lists included.
#[derive(Debug, Clone, Copy)]
pub struct TableGrant {
    pub table: &'static str,
    pub privileges: &'static str,
}

/// Everything [`PUBLIC`] may do; anything else (a table added later included) is
/// refused. Column lists keep a participant route from reading or writing what its
/// statements never touch (instance ids, statuses, the admin's records). Tables a
/// migration has not created yet are granted by the first setup after it has.
pub const PUBLIC_GRANTS: &[TableGrant] = &[
    // The assignment, the free count, a fresh code, the seat's view
    // (`vms::assign`, `vms::free_seat_count`, `seats::send_code`, `seats::view`).
    // `credential_hash` is read only as `IS NULL` (a classic VM); it is a SHA-256.
    TableGrant {
        table: "vms",
        privileges: "SELECT (hostname, user_email, crd_command, pin, status, healthy, reset_id, created_at, \
                     delivered_at, acknowledged_at, start_host_ok, credential_hash, code_changes, \
                     code_changed_at), \
                     UPDATE (user_email, crd_command, pin, in_use, assigned_at, delivered_at, \
                     acknowledged_at, code_changes, code_changed_at, updated_at)",
    },
    // The seat's page token: issued on the success page, read by the seat routes.
    TableGrant {
        table: "seat_tokens",
        privileges: "SELECT (token_hash, hostname, email, ended), INSERT (token_hash, hostname, email)",
    },
    // The admin login form's throttle (`admin::reserve_attempt` and the rest).
    TableGrant {
        table: "admin_login_failures",
        privileges: "SELECT, INSERT, UPDATE, DELETE",
    },
    // The health check's schema version.
    TableGrant {
        table: "refinery_schema_history",
        privileges: "SELECT (version)",
    },
    // V6: the workshop's settings the participant pages show.
    TableGrant {
        table: "workshop_settings",
        privileges: "SELECT",
    },
    // V6: the per-address counter of seat requests.
    TableGrant {
        table: "seat_request_windows",
        privileges: "SELECT, INSERT, UPDATE",
    },
    // V6: the admin login form records the session it issues (`admin::create_session`);
    // reading, ending and listing sessions are admin routes' (lablink_app). A row alone
    // is no session: the cookie must also carry the session key's signature.
    TableGrant {
        table: "admin_sessions",
        privileges: "INSERT (id_hash, admin_user, secret_epoch, address, expires_at)",
    },
    // V7: when the fleet is destroyed (the participants' pages announce it).
    TableGrant {
        table: "fleet_schedule",
        privileges: "SELECT (id, ends_at)",
    },
];

/// What a [`setup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOutcome {
    /// Roles that did not exist before.
    pub created_roles: Vec<&'static str>,
    /// The schema version before and after the migrations.
    pub version_before: Option<i32>,
    pub version_after: Option<i32>,
    /// [`PUBLIC_GRANTS`] tables that do not exist (yet), so were not granted.
    pub absent_tables: Vec<&'static str>,
}

/// Create the roles, apply the migrations as [`OWNER`], and grant the runtime roles
/// exactly their privileges. Run as the master user (a `CREATEROLE` owner of the
/// database; on RDS also the grantor of `rds_iam`, which is granted to the runtime roles
/// only where it exists). Refuses a database whose schema objects someone else owns
/// (migrations would fail on them, and their owner could still change them).
pub async fn setup(client: &mut Client) -> Result<SetupOutcome, DbError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SETUP_LOCK])
        .await?;
    let result = setup_locked(client).await;
    // Leave the session as it was found, whatever happened.
    let reset = client.batch_execute("RESET ROLE").await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SETUP_LOCK])
        .await?;
    let outcome = result?;
    reset?;
    Ok(outcome)
}

async fn setup_locked(client: &mut Client) -> Result<SetupOutcome, DbError> {
    let created_roles = ensure_roles(client).await?;
    let db: String = client.query_one("SELECT current_database()", &[]).await?.get(0);
    let db = quote_ident(&db);
    let runtime = RUNTIME.join(", ");
    // As the database's owner: who may connect (no temporary tables either), and who
    // may create in the schema: no one but the owner role (earlier releases let
    // lablink_app create, and gave it TEMPORARY).
    client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC;
             REVOKE TEMPORARY ON DATABASE {db} FROM {runtime};
             GRANT CONNECT ON DATABASE {db} TO {runtime};
             REVOKE CREATE ON SCHEMA public FROM PUBLIC, {runtime};
             GRANT USAGE, CREATE ON SCHEMA public TO {OWNER};
             GRANT USAGE ON SCHEMA public TO {runtime};"
        ))
        .await?;
    refuse_foreign_objects(client).await?;
    client.batch_execute(&format!("SET ROLE {OWNER}")).await?;
    let version_before = super::schema_version(client).await?;
    let version_after = super::migrate(client).await?;
    let absent_tables = grant(client).await?;
    Ok(SetupOutcome {
        created_roles,
        version_before,
        version_after,
        absent_tables,
    })
}

/// The three roles, `rds_iam` for the runtime ones (where it exists: RDS), and the
/// session user's membership in the owner role (for `SET ROLE`). Roles are
/// cluster-wide: another database's setup may create the same role at the same moment,
/// which only one of them wins (the other's error says it exists: fine).
async fn ensure_roles(client: &Client) -> Result<Vec<&'static str>, DbError> {
    let mut created = Vec::new();
    for (role, login) in [(OWNER, "NOLOGIN"), (APP, "LOGIN"), (PUBLIC, "LOGIN")] {
        if role_exists(client, role).await? {
            continue;
        }
        match client.batch_execute(&format!("CREATE ROLE {role} {login}")).await {
            Ok(()) => created.push(role),
            Err(e) if is_concurrent_duplicate(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let me: String = client.query_one("SELECT current_user::text", &[]).await?.get(0);
    let mut memberships: Vec<(&str, &str)> = Vec::new();
    if role_exists(client, "rds_iam").await? {
        memberships.extend(RUNTIME.iter().map(|r| ("rds_iam", *r)));
    }
    memberships.push((OWNER, &me));
    for (role, member) in memberships {
        let is_member: bool = client
            .query_one(
                "SELECT pg_has_role($1::text::name, $2::text::name, 'MEMBER')",
                &[&member, &role],
            )
            .await?
            .get(0);
        if is_member {
            continue;
        }
        let sql = format!("GRANT {} TO {}", quote_ident(role), quote_ident(member));
        match client.batch_execute(&sql).await {
            Ok(()) => {}
            Err(e) if is_concurrent_duplicate(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(created)
}

/// Tables, sequences, views and functions of the schema that the owner role does not
/// own (e.g. migrated by hand as another user). Granting on them as the owner role would
/// silently grant nothing, so the setup stops and names them.
async fn refuse_foreign_objects(client: &Client) -> Result<(), DbError> {
    let rows = client
        .query(
            "SELECT c.relname || ' (owned by ' || pg_get_userbyid(c.relowner) || ')'
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
               AND c.relowner <> $1::text::regrole
             UNION ALL
             SELECT p.proname || '() (owned by ' || pg_get_userbyid(p.proowner) || ')'
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND p.proowner <> $1::text::regrole
             ORDER BY 1",
            &[&OWNER],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    Err(DbError::Setup(format!(
        "these objects must belong to {OWNER} before migrations and grants can run: {}; \
         as their owner, run ALTER TABLE/SEQUENCE/FUNCTION ... OWNER TO {OWNER}",
        names.join(", ")
    )))
}

/// Every grant, in one transaction (a route never sees the moment between the revoke
/// and the grant): lablink_app reads and writes every table and uses every sequence
/// (the migration history: read only); lablink_public gets [`PUBLIC_GRANTS`] and nothing
/// else. Runs as the owner role. Returns the listed tables that do not exist.
async fn grant(client: &mut Client) -> Result<Vec<&'static str>, DbError> {
    let tx = client.transaction().await?;
    let runtime = RUNTIME.join(", ");
    tx.batch_execute(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {runtime};
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {runtime};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP};
         REVOKE INSERT, UPDATE, DELETE ON refinery_schema_history FROM {APP};
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP};"
    ))
    .await?;
    let mut absent = Vec::new();
    for g in PUBLIC_GRANTS {
        let exists: bool = tx
            .query_one(
                "SELECT to_regclass(format('public.%I', $1::text)) IS NOT NULL",
                &[&g.table],
            )
            .await?
            .get(0);
        if exists {
            tx.batch_execute(&format!(
                "GRANT {} ON public.{} TO {PUBLIC}",
                g.privileges,
                quote_ident(g.table)
            ))
            .await?;
        } else {
            absent.push(g.table);
        }
    }
    tx.commit().await?;
    Ok(absent)
}

async fn role_exists(client: &Client, role: &str) -> Result<bool, DbError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&role],
        )
        .await?
        .get(0))
}

/// Another session created the same role, or granted the same membership, between our
/// check and our statement.
fn is_concurrent_duplicate(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("lablink"), "\"lablink\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_public_grant_list_names_each_table_once() {
        let mut tables: Vec<&str> = PUBLIC_GRANTS.iter().map(|g| g.table).collect();
        tables.sort();
        tables.dedup();
        assert_eq!(tables.len(), PUBLIC_GRANTS.len());
    }
}
