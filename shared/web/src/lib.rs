//! LabLink's HTTP layer, shared by every route's Lambda and by the local runner.
//!
//! A request goes: [`routes::Route::handle`] checks the method and calls the route's
//! handler, which parses typed input once ([`request`]), checks who is calling
//! ([`auth`]), calls the core (`lablink-core`) and renders JSON or a page
//! ([`respond`], `lablink-templates`). Every failure is an [`error::ApiError`], mapped
//! to a response in one place ([`routes::Route::handle`]): client mistakes are 4xx with
//! a message, never a 500 or a panic.
//!
//! Features decide what a route's binary links: none (participant and VM routes:
//! Postgres only), `admin` (sessions, argon2, the admin secret from Secrets Manager),
//! `jobs` (the job store: DynamoDB), `aws-credentials` (STS), `export` (S3); `full` is
//! all of them, `local` adds the one-server router of the local runner.

pub mod auth;
pub mod error;
pub mod lambda;

/// A handler's response naming a local file for the local runner's server to stream
/// (export downloads; bodies of Lambda responses are held in memory, files are not).
pub mod local_file {
    pub const HEADER: &str = "x-lablink-local-file";
}
#[cfg(feature = "local")]
pub mod local;
pub mod request;
pub mod respond;
pub mod routes;
pub mod state;

pub use error::ApiError;
pub use routes::Route;
pub use state::{AppConfig, AppState};

pub use lambda_http::{Body, Request, Response};
