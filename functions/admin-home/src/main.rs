//! `GET /admin`: the admin dashboard: fleet counts, free seats, provisioning identity, recent jobs.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::HOME`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::HOME).await
}
