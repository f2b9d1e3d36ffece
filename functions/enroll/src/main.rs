//! `POST /api/enroll`: a launched VM's one-time enrollment: instance id + job secret → hostname and its own credential.
//! Wiring only; the handler is [`lablink_web::Route::Enroll`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::Enroll).await
}
