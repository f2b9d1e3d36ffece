//! `GET /admin/jobs/{id}`: a job's progress page.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::JOB`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::JOB).await
}
