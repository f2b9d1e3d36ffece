//! The values `events/generate.py` bakes into the API Gateway fixtures, and the rows and
//! records those fixtures expect to find.

use chrono::Utc;
use lablink_core::credential::Secret;
use lablink_core::db::fleet;
use lablink_ops::{Job, JobId, JobKind, JobStore};

pub const SESSION_KEY: &str = "abababababababababababababababababababababababababababababababab";
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "fixture-admin-password";
pub const DEPLOYMENT: &str = "test";
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
