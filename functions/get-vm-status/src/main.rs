//! `GET /api/vm-status/{hostname}`: one VM's status (the VM or an admin).
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::GET_VM_STATUS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::GET_VM_STATUS).await
}
