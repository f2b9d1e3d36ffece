//! `POST /api/vm-status`: a VM reports its status.
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::POST_VM_STATUS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::POST_VM_STATUS).await
}
