//! The deployment's database setup (`lablink_db::roles::setup`) against a real Postgres:
//! it migrates an empty database as the owner role, and each runtime role may do
//! exactly what its routes need. Each test has its own database; the roles are the
//! cluster's, shared by tests running at once.

use chrono::Utc;
use lablink_core::credential::Secret;
use lablink_core::domain::{CrdCommand, Email, Hostname, Pin, VmStatus};
use lablink_db::roles::{self, APP, OWNER, PUBLIC};
use lablink_db::seats::{self, CodeLimits, Proof};
use lablink_db::{DbError, admin, logs, vms};
use lablink_testkit::{MASTER, TestDb};
use tokio_postgres::error::SqlState;

fn host(s: &str) -> Hostname {
    Hostname::parse(s).unwrap()
}

async fn running_vms(client: &tokio_postgres::Client, names: &[&str]) {
    let new: Vec<vms::NewVm> = names
        .iter()
        .map(|h| vms::NewVm {
            hostname: host(h),
            instance_id: Some(format!("i-{h}")),
            credential_hash: Some(Secret::generate().hash()),
            status: VmStatus::Running,
            provision: None,
        })
        .collect();
    vms::create_vms(client, &new).await.unwrap();
}

fn is_denied(e: &DbError) -> bool {
    matches!(e, DbError::Query(q) if q.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE))
}

/// `sql` fails with "permission denied".
async fn refused(client: &tokio_postgres::Client, sql: &str) {
    let e = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} should be refused"));
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e}");
}

/// Who owns what and who may do what, as one comparable text.
async fn privileges(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT string_agg(format('%s owner=%s acl=%s cols=%s', c.relname, pg_get_userbyid(c.relowner),
                                      c.relacl::text,
                                      (SELECT string_agg(a.attname || a.attacl::text, ',' ORDER BY a.attnum)
                                       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)),
                               E'\\n' ORDER BY c.relname)
                    || E'\\n' || (SELECT datacl::text FROM pg_database WHERE datname = current_database())
                    || E'\\n' || (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_setup_migrates_as_the_owner_and_a_second_run_changes_nothing() {
    let db = TestDb::empty().await;
    let mut master = db.config_as(MASTER).connect().await.unwrap();
    let first = roles::setup(&mut master).await.unwrap();
    assert_eq!(first.version_before, None);
    assert_eq!(first.version_after, Some(lablink_db::latest_known_version()));
    for table in [
        "vms",
        "seat_tokens",
        "admin_login_failures",
        "refinery_schema_history",
    ] {
        assert!(!first.absent_tables.contains(&table), "{table} was not granted");
    }
    // Every table, sequence and function belongs to the owner role, not to the master.
    let foreign: i64 = master
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'i')
                       AND pg_get_userbyid(c.relowner) <> $1)
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> $1)",
            &[&OWNER],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0, "objects not owned by {OWNER}");
    let tables: i64 = master
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tables >= 10, "{tables} tables");
    // The runtime roles log in with IAM tokens on RDS (`rds_iam`); the master never
    // inherits it (RDS would then refuse its password), and the owner never logs in.
    let r = master
        .query_one(
            "SELECT pg_has_role($1, 'rds_iam', 'MEMBER'), pg_has_role($2, 'rds_iam', 'MEMBER'),
                    pg_has_role($3, 'rds_iam', 'MEMBER'), pg_has_role($3, $4, 'MEMBER'),
                    (SELECT rolcanlogin FROM pg_roles WHERE rolname = $4)",
            &[&APP, &PUBLIC, &MASTER, &OWNER],
        )
        .await
        .unwrap();
    let flags: [bool; 5] = std::array::from_fn(|i| r.get(i));
    assert_eq!(flags, [true, true, false, true, false]);
    // The master's session is left as it was.
    let me: String = master
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(me, MASTER);

    let before = privileges(&master).await;
    let second = roles::setup(&mut master).await.unwrap();
    assert!(second.created_roles.is_empty());
    assert_eq!(second.version_before, first.version_after);
    assert_eq!(second.version_after, first.version_after);
    assert_eq!(second.absent_tables, first.absent_tables);
    assert_eq!(
        privileges(&master).await,
        before,
        "a second setup changed privileges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setups_running_at_once_on_one_and_on_several_databases_all_succeed() {
    let dbs = tokio::join!(TestDb::empty(), TestDb::empty(), TestDb::empty());
    let dbs = [dbs.0, dbs.1, dbs.2];
    // Two tasks of one deployment, and two more deployments, at the same moment.
    let targets = [&dbs[0], &dbs[0], &dbs[1], &dbs[2]];
    let runs = targets.map(|db| {
        let config = db.config_as(MASTER);
        tokio::spawn(async move {
            let mut c = config.connect().await.unwrap();
            roles::setup(&mut c).await
        })
    });
    for run in runs {
        let outcome = run.await.unwrap().unwrap();
        assert_eq!(outcome.version_after, Some(lablink_db::latest_known_version()));
    }
}

#[tokio::test]
async fn the_public_role_may_assign_count_and_follow_a_seat_but_nothing_else() {
    let db = TestDb::with_roles().await;
    let app = db.config_as(APP).connect().await.unwrap();
    running_vms(&app, &["vm-a", "vm-b"]).await;
    let public = db.config_as(PUBLIC).connect().await.unwrap();

    // What the participant routes do.
    assert_eq!(vms::free_seat_count(&public).await.unwrap(), 2);
    let email = Email::parse("ada@uni.edu").unwrap();
    let command = CrdCommand::from_code("4/0Afirst").unwrap();
    let a = vms::assign(&public, &email, &command, &Pin::generate())
        .await
        .unwrap()
        .expect("a free VM");
    assert!(a.fresh);
    assert_eq!(vms::free_seat_count(&public).await.unwrap(), 1);
    let again = vms::assign(&public, &email, &command, &Pin::generate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.hostname.as_str(), again.fresh),
        (a.hostname.as_str(), false)
    );
    let token = seats::issue_token(&public, &a.hostname, &email).await.unwrap();
    let view = seats::view(&public, token.expose(), CodeLimits::default())
        .await
        .unwrap()
        .expect("the seat");
    assert_eq!(view.hostname, a.hostname.as_str());
    assert_eq!(view.state, seats::SeatState::Connecting);
    // V6/V7's statements of the participant routes and the login form.
    let defaults = lablink_core::workshop::Gate::default();
    assert_eq!(
        lablink_db::workshop::gate(&public, &defaults).await.unwrap(),
        defaults
    );
    let now = Utc::now();
    assert_eq!(
        lablink_db::workshop::reserve_seat(&public, "192.0.2.9", 100, chrono::Duration::minutes(10), now)
            .await
            .unwrap(),
        None
    );
    lablink_db::workshop::give_back_seat(&public, "192.0.2.9")
        .await
        .unwrap();
    assert!(vms::holds_seat(&public, &email).await.unwrap());
    admin::create_session(
        &public,
        &[7; 32],
        "admin",
        "epoch",
        "192.0.2.9",
        now + chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    refused(&public, "SELECT * FROM admin_sessions").await;
    refused(&public, "DELETE FROM seat_request_windows").await;
    lablink_db::fleet::set_end(&app, now + chrono::Duration::minutes(5), "admin", false)
        .await
        .unwrap();
    let view = seats::view(&public, token.expose(), CodeLimits::default())
        .await
        .unwrap()
        .expect("the seat");
    assert!(
        view.fleet_ends_at.is_some(),
        "the seat view reads the fleet's end"
    );
    refused(&public, "DELETE FROM fleet_schedule").await;
    let change = seats::send_code(
        &public,
        &a.hostname,
        email.as_str(),
        &CrdCommand::from_code("4/0Asecond").unwrap(),
        &Pin::generate(),
        CodeLimits {
            min_interval: std::time::Duration::ZERO,
            max_changes: 10,
        },
        Proof::SeatToken,
    )
    .await
    .unwrap();
    assert!(matches!(change, seats::CodeChange::Sent { .. }), "{change:?}");
    // The refusal's read too.
    let too_soon = seats::send_code(
        &public,
        &a.hostname,
        email.as_str(),
        &CrdCommand::from_code("4/0Athird").unwrap(),
        &Pin::generate(),
        CodeLimits::default(),
        Proof::Email,
    )
    .await
    .unwrap();
    assert!(
        matches!(too_soon, seats::CodeChange::TooSoon { .. }),
        "{too_soon:?}"
    );
    assert_eq!(
        lablink_db::schema_version(&public).await.unwrap(),
        Some(lablink_db::latest_known_version())
    );
    let limits = [admin::Limit {
        key: "ip:192.0.2.1".into(),
        max_failures: 5,
    }];
    let blocked = admin::reserve_attempt(&public, &limits, chrono::Duration::minutes(15), Utc::now())
        .await
        .unwrap();
    assert_eq!(blocked, None);
    admin::forgive_attempt(&public, "ip:192.0.2.1").await.unwrap();
    admin::clear_failures(&public, "ip:192.0.2.1").await.unwrap();

    // And nothing else: the admin's and the VMs' writes, other columns, DDL.
    assert!(is_denied(
        &vms::delete_vm(&public, &host("vm-b")).await.unwrap_err()
    ));
    assert!(is_denied(&vms::clear_all(&public).await.unwrap_err()));
    let line = logs::LogLine {
        event_id: "e1".into(),
        logged_at: Utc::now(),
        message: "hello".into(),
    };
    assert!(is_denied(
        &logs::append(&public, &host("vm-a"), &[line]).await.unwrap_err()
    ));
    assert!(is_denied(
        &seats::release(&public, &a.hostname, false, "mallory")
            .await
            .unwrap_err()
    ));
    assert!(is_denied(&vms::list_vms(&public).await.unwrap_err()));
    refused(&public, "SELECT instance_id FROM vms").await;
    refused(&public, "UPDATE vms SET status = 'error'").await;
    refused(&public, "INSERT INTO vms (hostname) VALUES ('vm-c')").await;
    refused(&public, "UPDATE seat_tokens SET ended = 'released'").await;
    refused(&public, "DELETE FROM seat_tokens").await;
    refused(&public, "SELECT * FROM vm_actions").await;
    refused(
        &public,
        "INSERT INTO vm_actions (hostname, action, actor, detail) VALUES ('vm-a', 'release', 'x', 'y')",
    )
    .await;
    refused(&public, "SELECT * FROM ops_jobs").await;
    refused(&public, "SELECT * FROM vm_enrollment_secrets").await;
    refused(&public, "DELETE FROM refinery_schema_history").await;
    refused(&public, "CREATE TABLE sneaky (x int)").await;
    refused(&public, "CREATE TEMP TABLE sneaky (x int)").await;
    refused(&public, "ALTER TABLE vms ADD COLUMN sneaky int").await;
    refused(&public, "SET ROLE lablink_owner").await;
    // The refused statements changed nothing.
    assert_eq!(vms::list_vms(&app).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_app_role_reads_and_writes_every_table_but_changes_no_schema() {
    let db = TestDb::with_roles().await;
    let app = db.config_as(APP).connect().await.unwrap();
    running_vms(&app, &["vm-a", "vm-b"]).await;
    let line = logs::LogLine {
        event_id: "e1".into(),
        logged_at: Utc::now(),
        message: "hello".into(),
    };
    assert_eq!(logs::append(&app, &host("vm-a"), &[line]).await.unwrap(), Some(1));
    // Sequences: the hostname counter and the reset numbers.
    let names = lablink_db::fleet::allocate_hostnames(&app, "test", 2)
        .await
        .unwrap();
    assert_eq!(names.len(), 2);
    assert!(matches!(
        seats::release(&app, &host("vm-a"), false, "admin").await.unwrap(),
        seats::ActionOutcome::Done { .. }
    ));
    assert_eq!(seats::recent_actions(&app, 5).await.unwrap().len(), 1);
    assert!(vms::delete_vm(&app, &host("vm-b")).await.unwrap());
    assert_eq!(
        lablink_db::schema_version(&app).await.unwrap(),
        Some(lablink_db::latest_known_version())
    );
    refused(&app, "CREATE TABLE sneaky (x int)").await;
    refused(&app, "ALTER TABLE vms ADD COLUMN sneaky int").await;
    refused(&app, "DROP TABLE vm_actions").await;
    refused(&app, "DELETE FROM refinery_schema_history").await;
    refused(&app, "TRUNCATE vm_log_lines").await;
    refused(&app, "SET ROLE lablink_owner").await;
}

#[tokio::test]
async fn a_schema_someone_else_owns_is_refused_by_name() {
    // Migrated as the server's admin user (as the local runner does), not the owner role.
    let db = TestDb::new().await;
    let mut c = db.client().await;
    let e = roles::setup(&mut c).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DbError::Setup(_)), "{msg}");
    assert!(msg.contains("vms (owned by"), "{msg}");
    assert!(msg.contains("notify_crd_command_update()"), "{msg}");
}

#[tokio::test]
async fn what_the_earlier_setup_granted_lablink_app_is_taken_back() {
    let db = TestDb::empty().await;
    let mut master = db.config_as(MASTER).connect().await.unwrap();
    roles::setup(&mut master).await.unwrap();
    // What the psql script of earlier releases granted.
    master
        .batch_execute(&format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {} TO {APP}; GRANT USAGE, CREATE ON SCHEMA public TO {APP}",
            db.name
        ))
        .await
        .unwrap();
    let app = db.config_as(APP).connect().await.unwrap();
    app.batch_execute("CREATE TEMP TABLE allowed_before (x int)")
        .await
        .unwrap();
    roles::setup(&mut master).await.unwrap();
    let app = db.config_as(APP).connect().await.unwrap();
    refused(&app, "CREATE TABLE sneaky (x int)").await;
    refused(&app, "CREATE TEMP TABLE sneaky (x int)").await;
}

/// The grants listed for tables of a later migration (V6) apply once the tables exist:
/// made here as the owner role (a no-op once V6 has made them), then set up again.
#[tokio::test]
async fn listed_tables_of_a_later_migration_are_granted_once_they_exist() {
    let db = TestDb::with_roles().await;
    let mut master = db.config_as(MASTER).connect().await.unwrap();
    master
        .batch_execute(&format!(
            "SET ROLE {OWNER};
             CREATE TABLE IF NOT EXISTS workshop_settings (id INT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
                 access_code TEXT, participants TEXT[], seats_per_address INT NOT NULL,
                 window_minutes INT NOT NULL, updated_by TEXT NOT NULL,
                 updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS seat_request_windows (address TEXT PRIMARY KEY,
                 requests INT NOT NULL, window_start TIMESTAMPTZ NOT NULL);
             CREATE TABLE IF NOT EXISTS admin_sessions (id_hash BYTEA PRIMARY KEY,
                 admin_user TEXT NOT NULL, secret_epoch TEXT NOT NULL, address TEXT NOT NULL,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now(), expires_at TIMESTAMPTZ NOT NULL,
                 ended_at TIMESTAMPTZ);
             RESET ROLE;"
        ))
        .await
        .unwrap();
    let outcome = roles::setup(&mut master).await.unwrap();
    assert!(outcome.absent_tables.is_empty(), "{:?}", outcome.absent_tables);
    let public = db.config_as(PUBLIC).connect().await.unwrap();
    public
        .batch_execute(
            "SELECT * FROM workshop_settings;
             INSERT INTO seat_request_windows (address, requests, window_start) VALUES ('192.0.2.1', 1, now())
                 ON CONFLICT (address) DO UPDATE SET requests = seat_request_windows.requests + 1;
             UPDATE seat_request_windows SET requests = GREATEST(requests - 1, 0) WHERE address = '192.0.2.1';
             INSERT INTO admin_sessions (id_hash, admin_user, secret_epoch, address, expires_at)
                 VALUES (decode(repeat('00', 32), 'hex'), 'admin', 'e', '192.0.2.1', now() + interval '1 hour');",
        )
        .await
        .unwrap();
    refused(&public, "UPDATE workshop_settings SET access_code = 'x'").await;
    refused(&public, "SELECT * FROM admin_sessions").await;
    refused(&public, "UPDATE admin_sessions SET ended_at = NULL").await;
    let app = db.config_as(APP).connect().await.unwrap();
    app.batch_execute("UPDATE admin_sessions SET ended_at = now(); DELETE FROM workshop_settings")
        .await
        .unwrap();
}
