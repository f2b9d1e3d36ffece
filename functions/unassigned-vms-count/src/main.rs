//! `GET /api/unassigned_vms_count`: the live free-VM count.
//! Wiring only; the handler is [`lablink_web::Route::UnassignedVmsCount`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::UnassignedVmsCount).await
}
