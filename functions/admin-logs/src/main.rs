//! `GET /admin/logs/{hostname}`: a VM's live log tail.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::LOGS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::LOGS).await
}
