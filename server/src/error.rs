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
    /// The change conflicts with the state it would change (a rollout in progress).
    Conflict,
    /// A fault on our side; never used for client mistakes.
    Internal,
}

impl ErrorKind {
    /// Every kind, for series exposed at zero.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::PermissionDenied,
        ErrorKind::Unauthenticated,
        ErrorKind::RequestTimeout,
        ErrorKind::Conflict,
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
            ErrorKind::Conflict => StatusCode::CONFLICT,
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
            ErrorKind::Conflict => tonic::Code::FailedPrecondition,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The gRPC code's canonical name (`INVALID_ARGUMENT`), for records and logs.
    pub fn grpc_code_name(self) -> &'static str {
        match self.grpc_code() {
            tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
            tonic::Code::NotFound => "NOT_FOUND",
            tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            tonic::Code::Unavailable => "UNAVAILABLE",
            tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            tonic::Code::PermissionDenied => "PERMISSION_DENIED",
            tonic::Code::Unauthenticated => "UNAUTHENTICATED",
            tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
            _ => "INTERNAL",
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
            ErrorKind::Conflict => "conflict",
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

/// Failures tonic detects before a handler runs, by (tonic's code, message
/// prefix), and the kind they really are: an undecodable message is the
/// client's mistake (tonic says INTERNAL), an oversize one is over the limit
/// (tonic says OUT_OF_RANGE). Messages may arrive percent-encoded.
const TONIC_PRE_HANDLER: &[(tonic::Code, &str, ErrorKind)] = &[
    (
        tonic::Code::Internal,
        "failed to decode",
        ErrorKind::InvalidArgument,
    ),
    (
        tonic::Code::Internal,
        "failed%20to%20decode",
        ErrorKind::InvalidArgument,
    ),
    (
        tonic::Code::OutOfRange,
        "Error, decoded message length too large",
        ErrorKind::PayloadTooLarge,
    ),
    (
        tonic::Code::OutOfRange,
        "Error,%20decoded%20message%20length%20too%20large",
        ErrorKind::PayloadTooLarge,
    ),
];

/// Puts right the code of a failure tonic answered before a handler ran
/// (such errors travel in the headers of a trailers-only response), by the
/// table above and this file's kind → code mapping.
pub fn classify_tonic_errors<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let (Some(status), Some(message)) = (headers.get("grpc-status"), headers.get("grpc-message"))
    else {
        return response;
    };
    let Some(code) = status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map(tonic::Code::from)
    else {
        return response;
    };
    let kind = TONIC_PRE_HANDLER
        .iter()
        .find(|(from, prefix, _)| {
            *from == code && message.as_bytes().starts_with(prefix.as_bytes())
        })
        .map(|(_, _, kind)| *kind);
    if let Some(kind) = kind {
        let code = kind.grpc_code() as i32;
        if let Ok(value) = http::HeaderValue::from_str(&code.to_string()) {
            headers.insert("grpc-status", value);
        }
    }
    response
}
