//! `POST /admin/login`: checks the admin password (argon2, throttled) and sets the session cookie.
//! Wiring only; the handler is [`lablink_web::Route::AdminLogin`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminLogin).await
}
