//! `GET /api/vm-status/{hostname}`: one VM's status (the VM or an admin).
//! Wiring only; the handler is [`lablink_web::Route::GetVmStatus`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::GetVmStatus).await
}
