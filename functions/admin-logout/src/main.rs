//! `POST /admin/logout`: ends the admin session.
//! Wiring only; the handler is [`lablink_web::Route::AdminLogout`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminLogout).await
}
