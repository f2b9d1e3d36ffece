//! `POST /admin/logout`: ends the admin session.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::LOGOUT`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::LOGOUT).await
}
