//! `GET /admin/jobs/{id}`: a job's progress page.
//! Wiring only; the handler is [`lablink_web::Route::AdminJob`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminJob).await
}
