//! `POST /api/vm-export/{hostname}`: a VM reports its part of a data export.
//! Wiring only; the handler is [`lablink_web::Route::VmExport`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::VmExport).await
}
