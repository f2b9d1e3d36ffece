//! `POST /api/seat/{token}/code`: a fresh code for the seat's VM.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::SEAT_CODE`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::SEAT_CODE).await
}
