//! `GET /api/scp-client`: start a data export (or join the running one).
//! Wiring only; the handler is [`lablink_web::Route::ScpClient`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::ScpClient).await
}
