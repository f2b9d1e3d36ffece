//! `POST /api/admin/set-aws-credentials`: validates AWS keys with STS and stores them for the provisioner.
//! Wiring only; the handler is [`lablink_web::Route::SetAwsCredentials`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::SetAwsCredentials).await
}
