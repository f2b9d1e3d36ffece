//! The provisioner: invoked by the jobs table's DynamoDB stream. Each record names a
//! job; the job's stored state decides what runs (see `lablink_provision`), so a
//! redelivered batch launches nothing twice. Our own outages (job store, database)
//! fail the invocation so the stream retries it; provider errors end the job as failed.
//! Also invoked every minute by an EventBridge schedule: the fleet's end time
//! (`lablink_provision::schedule`).

use lablink_core::config::{Settings, exit_on_error};
use lablink_provision::stream::{ProvisionerConfig, ProvisionerRuntime};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let mut s = Settings::from_env();
    let cfg = ProvisionerConfig::read(&mut s);
    let cfg = exit_on_error(
        "provisioner",
        s.finish(|| cfg.expect("settings without errors build")),
    );
    // AWS clients are configured here (no network); the database connects on first use.
    let rt: &'static ProvisionerRuntime = Box::leak(Box::new(ProvisionerRuntime::new(cfg).await));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        if ProvisionerRuntime::is_schedule_tick(&event.payload) {
            let tick = rt.tick().await?;
            return Ok::<_, Error>(json!({ "tick": format!("{tick:?}") }));
        }
        let done = rt.handle(&event.payload).await?;
        let jobs: Vec<Value> = done
            .iter()
            .map(|(id, outcome)| json!({ "job": id, "outcome": format!("{outcome:?}") }))
            .collect();
        Ok::<_, Error>(json!({ "jobs": jobs }))
    }))
    .await
}
