//! `POST /api/vm-logs`: log lines from a forwarder or the VM.
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::POST_VM_LOGS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::POST_VM_LOGS).await
}
