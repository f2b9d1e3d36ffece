//! `GET /admin/create`: the launch form.
//! Wiring only; the handler is [`lablink_web::Route::AdminCreate`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminCreate).await
}
