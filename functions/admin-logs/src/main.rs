//! `GET /admin/logs/{hostname}`: a VM's live log tail.
//! Wiring only; the handler is [`lablink_web::Route::AdminLogs`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminLogs).await
}
