//! `GET /admin/login`: the admin login form.
//! Wiring only; the handler is [`lablink_web::Route::AdminLoginPage`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminLoginPage).await
}
