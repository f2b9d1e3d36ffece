//! The values `events/generate.py` bakes into the API Gateway fixtures, and the rows and
//! records those fixtures expect to find.

use chrono::Utc;
use lablink_core::credential::Secret;
use lablink_db::fleet;
use lablink_ops::{Job, JobId, JobKind, JobStore};

pub const SESSION_KEY: &str = "abababababababababababababababababababababababababababababababab";
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "fixture-admin-password";
pub const DEPLOYMENT: &str = "test";
/// The id of the admin session the fixtures' cookie names (recorded by
/// [`seed_admin_session`]).
pub const ADMIN_SESSION_ID: &str = "f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1";

/// The fixture admin's argon2id hash of [`ADMIN_PASSWORD`], with a fixed salt so every
/// process computes the same string (sessions are bound to it).
pub fn admin_password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::encode_b64(b"lablink-fixture!").expect("a valid salt");
        argon2::Argon2::default()
            .hash_password(ADMIN_PASSWORD.as_bytes(), &salt)
            .expect("argon2 hashes the fixture password")
            .to_string()
    })
}

/// The second session the logout fixture ends (so [`ADMIN_SESSION_ID`] stays live).
pub const LOGOUT_SESSION_ID: &str = "f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2";

/// The live admin sessions the fixtures' cookies name (until 2100).
pub async fn seed_admin_session(client: &tokio_postgres::Client) {
    use sha2::Digest;
    let epoch = lablink_core::credential::admin_epoch(admin_password_hash(), SESSION_KEY);
    for id in [ADMIN_SESSION_ID, LOGOUT_SESSION_ID] {
        let id_hash: [u8; 32] = sha2::Sha256::digest(id.as_bytes()).into();
        client
            .execute(
                "INSERT INTO admin_sessions (id_hash, admin_user, secret_epoch, address, expires_at)
                 VALUES ($1, $2, $3, '203.0.113.7', '2100-01-01T00:00:00Z')",
                &[&id_hash.as_slice(), &ADMIN_USER, &epoch],
            )
            .await
            .expect("fixture admin session");
    }
}
pub const JOB: &str = "20261123T100000Z-0f1c7a2e";
pub const INSTANCE: &str = "i-0fixture00000001";
pub const ENROLL_SECRET: &str = "fixture-enrollment-secret-of-job-0f1c7a2e";
pub const ENROLL_HOST: &str = "lablink-vm-enroll-1";

/// The VM the enroll fixture enrolls (launched by [`JOB`], not yet enrolled).
pub async fn seed_enrollment(client: &tokio_postgres::Client) {
    fleet::add_enrollment_secret(
        client,
        JOB,
        &Secret::presented(ENROLL_SECRET).hash(),
        Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .expect("enrollment secret");
    let now = Utc::now();
    fleet::record_launched(
        client,
        JOB,
        &[fleet::Launched {
            hostname: lablink_core::domain::Hostname::parse(ENROLL_HOST).unwrap(),
            instance_id: INSTANCE.into(),
        }],
        lablink_core::domain::Phase { start: now, end: now },
    )
    .await
    .expect("enrollment VM row");
}

/// The finished job the job fixtures read.
pub async fn seed_job(store: &dyn JobStore) {
    let mut job = Job::new(
        JobId::parse(JOB).unwrap(),
        JobKind::Launch { num_vms: 1 },
        ADMIN_USER,
        Utc::now(),
    );
    job.state = lablink_ops::JobState::Succeeded;
    store.insert(&job).await.expect("fixture job");
}

/// The export the `vm-export` fixture reports on: open, with the fixture VM asked.
pub const OPEN_EXPORT: &str = "20261123T110000Z-0e0e0e01";
/// The finished export whose zip the `export-download` fixture fetches.
pub const DONE_EXPORT: &str = "20261123T100000Z-0d0d0d02";
pub const DONE_EXPORT_ZIP: &str = "lablink_data20261123100000.zip";
/// The fixture VM (credential in `events/generate.py`).
pub const VM_HOST: &str = "lablink-vm-test-1";

/// The open export (Postgres) and the finished one (job store).
pub async fn seed_exports(client: &tokio_postgres::Client, store: &dyn JobStore) {
    seed_open_export(client).await;
    seed_done_export(store).await;
}

/// Export [`OPEN_EXPORT`], collecting, asking [`VM_HOST`].
pub async fn seed_open_export(client: &tokio_postgres::Client) {
    use lablink_db::exports;
    let target = exports::Target {
        hostname: lablink_core::domain::Hostname::parse(VM_HOST).unwrap(),
        email: Some("ada@uni.edu".into()),
    };
    let spec = exports::ExportSpec {
        extensions: vec!["slp".into()],
        max_file_bytes: 1 << 20,
        deadline: Utc::now() + chrono::Duration::hours(1),
    };
    exports::start(
        client,
        &lablink_core::domain::JobId::parse(OPEN_EXPORT).expect("a job id"),
        &spec,
        &[(target, "https://upload.example/fixture".into())],
    )
    .await
    .expect("fixture export");
}

/// The finished export [`DONE_EXPORT`] with its zip recorded.
pub async fn seed_done_export(store: &dyn JobStore) {
    let mut job = Job::new(
        JobId::parse(DONE_EXPORT).unwrap(),
        JobKind::Export,
        ADMIN_USER,
        Utc::now(),
    );
    job.state = lablink_ops::JobState::Succeeded;
    job.export = Some(lablink_ops::ExportOutcome {
        file: DONE_EXPORT_ZIP.into(),
        files: 0,
        bytes: 0,
        zip_bytes: 22,
    });
    store.insert(&job).await.expect("fixture export job");
}

/// The seat the seat fixtures show: [`SEAT_HOST`] assigned to [`SEAT_EMAIL`], its
/// status-page token [`SEAT_TOKEN`], its last code sent an hour ago (so a fresh one is
/// within the limits).
pub const SEAT_TOKEN: &str = "5ea75ea75ea75ea75ea75ea75ea75ea75ea75ea75ea75ea75ea75ea75ea75ea7";
pub const SEAT_HOST: &str = "lablink-vm-seat-1";
pub const SEAT_EMAIL: &str = "grace@uni.edu";

pub async fn seed_seat(client: &tokio_postgres::Client) {
    client
        .execute(
            "INSERT INTO vms (hostname, credential_hash, status, user_email, crd_command, pin,
                              assigned_at, code_changed_at)
             VALUES ($1, $2, 'running', $3,
                     'DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"4/0AanRJrjkgQxYzFixtureCode_-123\" --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)',
                     '246810', now() - interval '1 hour', now() - interval '1 hour')",
            &[
                &SEAT_HOST,
                &Secret::presented("fixture-credential-of-lablink-vm-seat-1").hash().as_bytes(),
                &SEAT_EMAIL,
            ],
        )
        .await
        .expect("fixture seat VM");
    client
        .execute(
            "INSERT INTO seat_tokens (token_hash, hostname, email) VALUES ($1, $2, $3)",
            &[
                &Secret::presented(SEAT_TOKEN).hash().as_bytes(),
                &SEAT_HOST,
                &SEAT_EMAIL,
            ],
        )
        .await
        .expect("fixture seat token");
}
