//! The whole `main` of a route's Lambda: tracing, settings (a bad one stops the process
//! with a one-line reason), state (no network work), then the runtime loop.

pub use lambda_http::Error;
use lambda_http::{Request, service_fn};
use tracing::Instrument;

use crate::{AppConfig, AppState, Route};

/// Serve `route` under the Lambda Runtime API until the runtime stops us.
pub async fn serve(route: Route) -> Result<(), lambda_http::Error> {
    let function = route.function;
    // JSON when the function's log format is JSON (AWS_LAMBDA_LOG_FORMAT=JSON, set by
    // the infrastructure); the level from AWS_LAMBDA_LOG_LEVEL or RUST_LOG.
    lambda_http::tracing::init_default_subscriber();
    let config = lablink_core::config::exit_on_error(function, AppConfig::from_env());
    // Lives as long as the process; every invocation borrows it.
    let state: &'static AppState = Box::leak(Box::new(AppState::new(config)));
    lambda_http::run(service_fn(move |req: Request| {
        let request_id = lambda_http::RequestExt::lambda_context_ref(&req)
            .map(|c| c.request_id.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("request", route = function, request_id);
        async move { Ok::<_, lambda_http::Error>(route.handle(state, req).await) }.instrument(span)
    }))
    .await
}
