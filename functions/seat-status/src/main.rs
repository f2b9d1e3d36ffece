//! `GET /api/seat/{token}`: the seat's state as JSON, for its page's script.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::SEAT_STATUS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::SEAT_STATUS).await
}
