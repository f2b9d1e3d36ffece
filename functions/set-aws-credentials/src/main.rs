//! `POST /api/admin/set-aws-credentials`: validates AWS keys with STS and stores them for the provisioner.
//! Wiring only; the route and its handler are [`lablink_web::routes::credentials::SET_AWS_CREDENTIALS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::credentials::SET_AWS_CREDENTIALS).await
}
