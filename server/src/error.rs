//! The server's one error type and the one table that maps each error kind to
//! an HTTP status and a gRPC code. No other module picks status codes.

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use switchyard_runtimes::{RuntimeError, TensorError};

/// Transport-neutral kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or does not match the model.
    InvalidArgument,
    /// No such model or version.
    NotFound,
    /// The body or message is larger than the configured limit.
    PayloadTooLarge,
    /// A queue is full; retry later.
    Overloaded,
    /// The model (or server) exists but cannot serve right now.
    Unavailable,
    /// The request's deadline passed before it was served.
    DeadlineExceeded,
    /// The operation is switched off (e.g. model control without `--enable-model-control`).
    PermissionDenied,
    /// Missing or wrong credentials (token, webhook signature).
    Unauthenticated,
    /// The client took too long to send its request (slow body).
    RequestTimeout,
    /// A fault on our side; never used for client mistakes.
    Internal,
}

impl ErrorKind {
    /// Every kind, for series exposed at zero.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::PermissionDenied,
        ErrorKind::Unauthenticated,
        ErrorKind::RequestTimeout,
        ErrorKind::Internal,
    ];

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::PayloadTooLarge | ErrorKind::Overloaded => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::RequestTimeout => tonic::Code::DeadlineExceeded,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error with a kind and a message that says what was wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<TensorError> for ApiError {
    fn from(err: TensorError) -> Self {
        ApiError::invalid(err.to_string())
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        match err {
            RuntimeError::InvalidInput(_) | RuntimeError::Tensor(_) => {
                ApiError::invalid(err.to_string())
            }
            RuntimeError::Load(_) | RuntimeError::Unavailable(_) => {
                ApiError::unavailable(err.to_string())
            }
            RuntimeError::Execution(_) => {
                ApiError::internal(format!("model execution failed: {err}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.kind.http_status(), axum::Json(body)).into_response()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        tonic::Status::new(err.kind.grpc_code(), err.message)
    }
}
