//! `POST /api/enroll`: a launched VM's one-time enrollment: instance id + job secret → hostname and its own credential.
//! Wiring only; the route and its handler are [`lablink_web::routes::enrollment::ENROLL`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::enrollment::ENROLL).await
}
