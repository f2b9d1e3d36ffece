//! `POST /api/request_vm`: a participant asks for a VM.
//! Wiring only; the handler is [`lablink_web::Route::RequestVm`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::RequestVm).await
}
