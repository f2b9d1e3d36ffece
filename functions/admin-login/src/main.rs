//! `POST /admin/login`: checks the admin password (argon2, throttled) and sets the session cookie.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::LOGIN`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::LOGIN).await
}
