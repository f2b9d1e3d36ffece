//! `GET /admin/instances`: every VM with status, GPU, in-use, assignment and startup timings.
//! Wiring only; the handler is [`lablink_web::Route::AdminInstances`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::AdminInstances).await
}
