//! `POST /api/admin/unset-aws-credentials`: forgets the stored AWS keys.
//! Wiring only; the route and its handler are [`lablink_web::routes::credentials::UNSET_AWS_CREDENTIALS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::credentials::UNSET_AWS_CREDENTIALS).await
}
