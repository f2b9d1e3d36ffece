//! `GET /api/health`: database reachable, schema version.
//! Wiring only; the handler is [`lablink_web::Route::Health`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::Health).await
}
