//! `GET /`: the participant page.
//! Wiring only; the handler is [`lablink_web::Route::Index`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::Index).await
}
