//! `GET /api/jobs/{id}`: a job's state as JSON.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_jobs::GET_JOB`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_jobs::GET_JOB).await
}
