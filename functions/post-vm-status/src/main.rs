//! `POST /api/vm-status`: a VM reports its status.
//! Wiring only; the handler is [`lablink_web::Route::PostVmStatus`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::PostVmStatus).await
}
