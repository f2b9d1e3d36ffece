//! `GET /api/vm-status`: every VM's status (admin).
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::LIST_VM_STATUS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::LIST_VM_STATUS).await
}
