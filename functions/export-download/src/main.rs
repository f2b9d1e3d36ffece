//! `GET /api/exports/{id}/download`: an export's zip (a short-lived presigned link).
//! Wiring only; the route and its handler are [`lablink_web::routes::export::EXPORT_DOWNLOAD`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::export::EXPORT_DOWNLOAD).await
}
