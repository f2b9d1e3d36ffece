//! `POST /api/vm-export/{hostname}`: a VM reports its part of a data export.
//! Wiring only; the route and its handler are [`lablink_web::routes::export::VM_EXPORT`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::export::VM_EXPORT).await
}
