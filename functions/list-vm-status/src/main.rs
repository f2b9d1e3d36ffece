//! `GET /api/vm-status`: every VM's status (admin).
//! Wiring only; the handler is [`lablink_web::Route::ListVmStatus`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::ListVmStatus).await
}
