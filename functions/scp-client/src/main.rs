//! `GET /api/scp-client`: start a data export (or join the running one).
//! Wiring only; the route and its handler are [`lablink_web::routes::export::SCP_CLIENT`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::export::SCP_CLIENT).await
}
