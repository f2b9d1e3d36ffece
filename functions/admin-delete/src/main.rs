//! `GET /admin/instances/delete`: the destroy form with its typed confirmation.
//! Wiring only; the handler is [`lablink_web::Route::AdminDelete`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminDelete).await
}
