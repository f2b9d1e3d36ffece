//! The log processor: invoked by the VM log group's subscription filter with
//! `{"awslogs":{"data": base64(gzip(JSON))}}`. See `log_processor` for the
//! decoding bounds and what each outcome means; `events/log-processor/` for fixtures.

use lablink_core::config::{Settings, exit_on_error};
use lablink_db::{Db, DbConfig};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let mut s = Settings::from_env();
    let cfg = DbConfig::read(&mut s);
    let cfg = exit_on_error(
        "log-processor",
        s.finish(|| cfg.expect("settings without errors build")),
    );
    // Connects on the first batch, kept across invocations.
    let db: &'static Db = Box::leak(Box::new(Db::new(cfg)));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        // Re-serialized once: the decoder takes the raw event and bounds everything itself.
        let raw = serde_json::to_vec(&event.payload)?;
        let client = db.client().await?;
        let outcome = log_processor::ingest(&client, &raw).await?;
        if let Some(reason) = &outcome.refused {
            tracing::error!(%reason, "refused a malformed subscription event; nothing written");
        } else if let Some(stream) = &outcome.unknown_stream {
            tracing::warn!(%stream, lines = outcome.received, "dropped a batch of an unknown VM");
        } else {
            tracing::info!(
                received = outcome.received,
                stored = outcome.stored,
                "batch appended"
            );
        }
        Ok::<_, Error>(serde_json::to_value(&outcome)?)
    }))
    .await
}
