//! `GET /admin/instances/delete`: the destroy form with its typed confirmation.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::DELETE`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::DELETE).await
}
