//! `GET /admin/instances`: every VM with status, GPU, in-use, assignment and startup timings.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::INSTANCES`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::INSTANCES).await
}
