//! `POST /api/launch`: queues a launch job (DynamoDB) and returns at once.
//! Wiring only; the handler is [`lablink_web::Route::Launch`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::Launch).await
}
