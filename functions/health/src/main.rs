//! `GET /api/health`: database reachable, schema version.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::HEALTH`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::HEALTH).await
}
