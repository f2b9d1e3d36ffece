//! `GET /`: the participant page.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::INDEX`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::INDEX).await
}
