//! `POST /api/gpu_health`: a VM reports its GPU health.
//! Wiring only; the handler is [`lablink_web::Route::GpuHealth`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::GpuHealth).await
}
