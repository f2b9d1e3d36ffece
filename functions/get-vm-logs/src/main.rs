//! `GET /api/vm-logs/{hostname}`: a VM's log lines after a cursor (the VM or an admin).
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::GET_VM_LOGS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::GET_VM_LOGS).await
}
