//! `GET /admin`: the admin dashboard: fleet counts, free seats, provisioning identity, recent jobs.
//! Wiring only; the handler is [`lablink_web::Route::AdminHome`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminHome).await
}
