//! `POST /api/gpu_health`: a VM reports its GPU health.
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::GPU_HEALTH`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::GPU_HEALTH).await
}
