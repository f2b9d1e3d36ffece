//! `POST /api/admin/fleet-end`: when the fleet is destroyed (extend it, or end it
//! sooner). Wiring only; the route and its handler are
//! [`lablink_web::routes::workshop::FLEET_END`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::workshop::FLEET_END).await
}
