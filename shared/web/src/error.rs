//! One error type for every handler, mapped to a response in exactly one place.

use lablink_db::DbError;
use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("this credential may not act on this resource")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    /// 403 with a reason (an admin write without its CSRF token, a cross-site post...).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed logins; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[cfg(feature = "jobs")]
    #[error(transparent)]
    Store(#[from] lablink_ops::StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl ApiError {
    pub fn bad_request(msg: impl std::fmt::Display) -> Self {
        Self::BadRequest(msg.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Refused(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            #[cfg(feature = "jobs")]
            Self::Store(lablink_ops::StoreError::Backend(_)) => StatusCode::SERVICE_UNAVAILABLE,
            #[cfg(feature = "jobs")]
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // The database being unreachable is an outage, not a bug: 503 tells
            // clients to retry.
            Self::Db(DbError::Connect(_) | DbError::Token(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON error response. Internal details are logged, not sent.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let message = match &self {
            Self::Db(DbError::Connect(_) | DbError::Token(_)) => {
                tracing::error!(error = %self, "database unavailable");
                "the database is unavailable; try again shortly".to_owned()
            }
            Self::Db(e) => {
                tracing::error!(error = %e, "internal error");
                "internal error".to_owned()
            }
            #[cfg(feature = "jobs")]
            Self::Store(e) => {
                tracing::error!(error = %e, "job store error");
                "the job store is unavailable; try again shortly".to_owned()
            }
            other => other.to_string(),
        };
        let mut b = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store");
        match &self {
            Self::MethodNotAllowed(allow) => b = b.header(header::ALLOW, *allow),
            Self::Unauthorized => b = b.header(header::WWW_AUTHENTICATE, "Bearer realm=\"lablink\""),
            Self::TooManyRequests { retry_after } => {
                b = b.header(header::RETRY_AFTER, retry_after.to_string())
            }
            _ => {}
        }
        let body =
            serde_json::to_string(&lablink_wire::ErrorBody::new(message)).expect("a string serializes");
        b.body(Body::from(body)).expect("static headers are valid")
    }
}
