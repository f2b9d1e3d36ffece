//! `POST /api/admin/workshop`: who may take a seat (access code, participant list,
//! per-address limit). Wiring only; the route and its handler are
//! [`lablink_web::routes::workshop::WORKSHOP`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::workshop::WORKSHOP).await
}
