//! `POST /destroy`: queues a destroy job (DynamoDB) and returns at once.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_jobs::DESTROY`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_jobs::DESTROY).await
}
