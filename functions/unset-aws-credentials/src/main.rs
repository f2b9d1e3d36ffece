//! `POST /api/admin/unset-aws-credentials`: forgets the stored AWS keys.
//! Wiring only; the handler is [`lablink_web::Route::UnsetAwsCredentials`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::UnsetAwsCredentials).await
}
