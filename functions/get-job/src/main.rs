//! `GET /api/jobs/{id}`: a job's state as JSON.
//! Wiring only; the handler is [`lablink_web::Route::GetJob`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::GetJob).await
}
