//! `POST /api/vm-metrics/{hostname}`: a VM's start-up timings.
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::POST_VM_METRICS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::POST_VM_METRICS).await
}
