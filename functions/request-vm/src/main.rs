//! `POST /api/request_vm`: a participant asks for a VM.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::REQUEST_VM`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::REQUEST_VM).await
}
