//! `POST /api/launch`: queues a launch job (DynamoDB) and returns at once.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_jobs::LAUNCH`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_jobs::LAUNCH).await
}
