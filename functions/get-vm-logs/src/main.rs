//! `GET /api/vm-logs/{hostname}`: a VM's log lines after a cursor (the VM or an admin).
//! Wiring only; the handler is [`lablink_web::Route::GetVmLogs`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::GetVmLogs).await
}
