//! `POST /api/vm-metrics/{hostname}`: a VM's start-up timings.
//! Wiring only; the handler is [`lablink_web::Route::PostVmMetrics`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::PostVmMetrics).await
}
