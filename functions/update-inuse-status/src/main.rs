//! `POST /api/update_inuse_status`: a VM reports whether its participant is using it.
//! Wiring only; the handler is [`lablink_web::Route::UpdateInuseStatus`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::UpdateInuseStatus).await
}
