//! `POST /api/update_inuse_status`: a VM reports whether its participant is using it.
//! Wiring only; the route and its handler are [`lablink_web::routes::vm::UPDATE_INUSE_STATUS`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::vm::UPDATE_INUSE_STATUS).await
}
