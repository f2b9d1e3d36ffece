//! `POST /api/vm-logs`: log lines from a forwarder or the VM.
//! Wiring only; the handler is [`lablink_web::Route::PostVmLogs`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::PostVmLogs).await
}
