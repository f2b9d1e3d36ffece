//! `GET /api/exports/{id}/download`: an export's zip (a short-lived presigned link).
//! Wiring only; the handler is [`lablink_web::Route::ExportDownload`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::Route::ExportDownload).await
}
