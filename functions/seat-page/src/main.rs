//! `GET /seat/{token}`: a participant's live seat page, by its unguessable token.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::SEAT_PAGE`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::SEAT_PAGE).await
}
