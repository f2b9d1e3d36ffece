//! `GET /admin/create`: the launch form.
//! Wiring only; the route and its handler are [`lablink_web::routes::admin_pages::CREATE`].

#[tokio::main]
async fn main() -> Result<(), lablink_web::lambda::Error> {
    lablink_web::lambda::serve(lablink_web::routes::admin_pages::CREATE).await
}
