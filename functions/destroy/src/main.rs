//! `POST /destroy`: queues a destroy job (DynamoDB) and returns at once.
//! Wiring only; the handler is [`lablink_web::Route::Destroy`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::Destroy).await
}
