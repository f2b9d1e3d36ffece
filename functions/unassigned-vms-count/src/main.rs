//! `GET /api/unassigned_vms_count`: the live free-VM count.
//! Wiring only; the route and its handler are [`lablink_web::routes::participant::UNASSIGNED_VMS_COUNT`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::participant::UNASSIGNED_VMS_COUNT).await
}
