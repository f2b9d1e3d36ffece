//! `POST /api/admin/vms/{hostname}/{action}`: release, reassign or replace one VM.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_jobs::VM_ACTION`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_jobs::VM_ACTION).await
}
