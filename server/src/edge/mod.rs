//! The edges: KServe v2 over HTTP/REST (`http`) and gRPC (`grpc`). They decode
//! and encode differently and share everything else, which lives here: the
//! server's identity, the operation → auth-scope table, the inference wrapper
//! (span, request metrics, route headers), readiness, and the rules for model
//! control requests; `model_info` builds metadata and config answers for both.
//! `auth`, `tls` and `webhook` are the edges' security parts. Neither edge
//! imports the other.

pub mod auth;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod model_info;
pub mod observability;
pub mod tls;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::control::Control;
use crate::control::rollouts::Rollouts;
use crate::error::ApiError;
use crate::serve::Serving;
use crate::serve::infer::{InferRequest, InferResponse, Routed, Served};
use auth::{Scope, Tokens};

pub const SERVER_NAME: &str = "switchyard";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions we implement, as server metadata reports them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "classification",
    "model_repository",
    "model_configuration",
    "statistics",
    "trace",
    "logging",
];

/// Response header (HTTP) / metadata key (gRPC) naming the endpoint that routed a request.
pub const ENDPOINT_HEADER: &str = "x-switchyard-endpoint";
/// Response header / metadata key naming the variant that served it.
pub const VARIANT_HEADER: &str = "x-switchyard-variant";

/// What a caller can ask of the server, whichever protocol carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ServerLive,
    ServerReady,
    ServerMetadata,
    ModelMetadata,
    ModelReady,
    ModelConfig,
    ModelStatistics,
    ModelInfer,
    RepositoryIndex,
    ModelLoad,
    ModelUnload,
    /// The trace extension (read and change).
    TraceSettings,
    /// The logging extension (read and change).
    LogSettings,
    Endpoints,
    /// Setting an endpoint's weights, commanding its canary rollout.
    EndpointControl,
    /// The console page: static, embedded, holds no data (what it shows comes
    /// from the API calls it makes with the caller's token).
    Console,
    /// Verified by its HMAC signature instead of a token.
    MlflowWebhook,
    /// A path that matches no route (answered 404 to those allowed to ask).
    Unknown,
}

impl Operation {
    /// The one table of who may call what: `None` = anyone (probes, the signed webhook).
    pub fn scope(self) -> Option<Scope> {
        match self {
            Operation::ServerLive
            | Operation::ServerReady
            | Operation::MlflowWebhook
            | Operation::Console => None,
            Operation::ModelLoad
            | Operation::ModelUnload
            | Operation::TraceSettings
            | Operation::LogSettings
            | Operation::EndpointControl => Some(Scope::Admin),
            Operation::ServerMetadata
            | Operation::ModelMetadata
            | Operation::ModelReady
            | Operation::ModelConfig
            | Operation::ModelStatistics
            | Operation::ModelInfer
            | Operation::RepositoryIndex
            | Operation::Endpoints
            | Operation::Unknown => Some(Scope::Inference),
        }
    }

    /// Request parameters a model control call accepts. Triton's config and
    /// file overrides are refused, not ignored: models load from the
    /// repository as they are.
    fn allowed_parameters(self) -> &'static [&'static str] {
        match self {
            Operation::ModelUnload => &["unload_dependents"],
            _ => &[],
        }
    }
}

/// Refuses model control parameters the operation does not take (both edges).
pub fn check_control_parameters<'a>(
    operation: Operation,
    mut keys: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    match keys.find(|key| !operation.allowed_parameters().contains(key)) {
        None => Ok(()),
        Some(key) => Err(ApiError::invalid(format!(
            "parameter `{key}` is not supported; models load from the repository as they are"
        ))),
    }
}

/// Which protocol carried a request (the `protocol` label of request metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Settings from flags that the edges consult per request.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Bearer tokens; empty sets leave the API open.
    pub tokens: Tokens,
    /// Largest HTTP request body accepted.
    pub max_request_bytes: usize,
    /// Longest an HTTP request may take from its headers to its answer
    /// (bounds slow bodies; model work is bounded by queue timeouts).
    pub request_timeout: Duration,
    /// HMAC secret MLflow signs its webhooks with; `None` turns the webhook endpoint off.
    pub mlflow_webhook_secret: Option<String>,
}

/// What both edges hold: the request path, the control plane's handle, the
/// canary rollouts' state, their settings, and readiness.
pub struct Edge {
    pub serving: Serving,
    pub control: Arc<Control>,
    pub rollouts: Arc<Rollouts>,
    pub settings: EdgeSettings,
    /// Log filter and trace sampling (the logging and trace extensions).
    pub telemetry: Arc<crate::telemetry::Controls>,
    readiness: Readiness,
    /// Set once the first load of every source has finished.
    loaded: AtomicBool,
    draining: AtomicBool,
}

/// What readiness waits for, besides the first load and not draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Every model in the catalog has a serving version.
    pub strict: bool,
    /// ...not counting models served by remote upstreams (a gateway in front
    /// of a pool stays ready and answers 503 for them while the pool is down).
    pub without_upstreams: bool,
}

impl Edge {
    pub fn new(
        serving: Serving,
        control: Arc<Control>,
        rollouts: Arc<Rollouts>,
        settings: EdgeSettings,
        telemetry: Arc<crate::telemetry::Controls>,
        readiness: Readiness,
    ) -> Arc<Self> {
        Arc::new(Edge {
            serving,
            control,
            rollouts,
            settings,
            telemetry,
            readiness,
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Acquire) || !self.is_loaded() {
            return false;
        }
        let catalog = self.serving.catalog.snapshot();
        match self.readiness {
            Readiness { strict: false, .. } => true,
            Readiness {
                without_upstreams: true,
                ..
            } => catalog.all_local_ready(),
            _ => catalog.all_ready(),
        }
    }

    /// Whether the first load has finished (until then: live, not ready,
    /// inference answered 503).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Marks the server as going away: readiness turns false at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Checks the caller's `Authorization` value against the operation's scope.
    pub fn authorize(
        &self,
        operation: Operation,
        authorization: Option<&str>,
    ) -> Result<(), ApiError> {
        match operation.scope() {
            None => Ok(()),
            Some(scope) => self.settings.tokens.check(authorization, scope),
        }
    }
}

/// One inference as both edges run it: the `infer` span (joined to an
/// incoming `traceparent`) with `decode` and `encode` children, the request
/// path, and the request's metrics (counted after encoding, so an encoding
/// failure counts as what it is). Returns the encoded answer (or the error)
/// and the route that took the request, for the edge's route headers.
pub async fn infer<Context, Encoded>(
    edge: &Edge,
    protocol: Protocol,
    model: &str,
    headers: ::http::HeaderMap,
    decode: impl Future<Output = Result<(InferRequest, Context), ApiError>>,
    encode: impl FnOnce(InferResponse, Context) -> Result<Encoded, ApiError>,
) -> (Result<Encoded, ApiError>, Option<Routed>) {
    let mut served = Served {
        model: None,
        started: Instant::now(),
        routed: None,
    };
    let span = tracing::info_span!("infer", model = %model, protocol = protocol.as_label());
    crate::telemetry::adopt_parent(&span, &headers);
    let result = async {
        if !edge.is_loaded() {
            return Err(ApiError::unavailable(
                "the server is still loading its models; retry shortly",
            ));
        }
        let (mut request, context) = decode.instrument(tracing::info_span!("decode")).await?;
        request.headers = headers;
        let response = crate::serve::infer::infer(&edge.serving, request, &mut served).await?;
        tracing::info_span!("encode").in_scope(|| encode(response, context))
    }
    .instrument(span)
    .await;
    served.record(&edge.serving.metrics, protocol.as_label(), &result);
    (result, served.routed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_probes_the_static_console_and_the_signed_webhook_are_open_and_only_control_needs_admin()
    {
        use Operation::*;
        let all = [
            ServerLive,
            ServerReady,
            ServerMetadata,
            ModelMetadata,
            ModelReady,
            ModelConfig,
            ModelStatistics,
            ModelInfer,
            RepositoryIndex,
            ModelLoad,
            ModelUnload,
            TraceSettings,
            LogSettings,
            Endpoints,
            EndpointControl,
            Console,
            MlflowWebhook,
            Unknown,
        ];
        for operation in all {
            let expected = match operation {
                ServerLive | ServerReady | MlflowWebhook | Console => None,
                ModelLoad | ModelUnload | TraceSettings | LogSettings | EndpointControl => {
                    Some(Scope::Admin)
                }
                _ => Some(Scope::Inference),
            };
            assert_eq!(operation.scope(), expected, "{operation:?}");
        }
    }

    #[test]
    fn control_parameters_follow_one_rule() {
        assert!(check_control_parameters(Operation::ModelLoad, std::iter::empty()).is_ok());
        let err =
            check_control_parameters(Operation::ModelLoad, ["config"].into_iter()).unwrap_err();
        assert!(
            err.message.contains("parameter `config`"),
            "{}",
            err.message
        );
        assert!(
            check_control_parameters(Operation::ModelUnload, ["unload_dependents"].into_iter())
                .is_ok()
        );
        assert!(check_control_parameters(Operation::ModelUnload, ["bogus"].into_iter()).is_err());
    }
}
