//! The application root: the only place that wires the layers together.
//! `cli` turns flags into typed parts, `build` assembles the request path,
//! the control plane and the edges from them (for `main` and for the tests
//! alike), and `serve` runs the listeners until shutdown, then drains.
//! `bench` is the `bench-runtime` subcommand.

pub mod bench;
pub mod cli;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::model::ConfigDefaults;
use crate::control::Control;
use crate::control::lifecycle::Lifecycle;
use crate::control::rollouts::Rollouts;
use crate::control::source::Source;
use crate::edge::auth::Tokens;
use crate::edge::conn::{Admission, TcpIncoming, serve_http};
use crate::edge::{Edge, EdgeSettings};
use crate::metrics::Metrics;
use crate::serve::catalog::CatalogStore;
use crate::serve::traffic::Traffic;
use crate::serve::{RequestLimits, Serving};

/// Per-request settings from flags, as one typed part.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether load/unload are allowed over the API.
    pub model_control: bool,
    /// Ready only when every model in the catalog has a serving version.
    pub strict_readiness: bool,
    /// With strict readiness: models served by remote upstreams do not count.
    pub ready_without_upstreams: bool,
    /// Largest HTTP request body accepted.
    pub max_request_bytes: usize,
    /// HMAC secret MLflow signs its webhooks with; `None` turns the webhook endpoint off.
    pub mlflow_webhook_secret: Option<String>,
    /// Bearer tokens; empty sets leave the API open.
    pub tokens: Tokens,
    /// Largest element count of one input tensor.
    pub max_tensor_elements: usize,
    /// Longest single BYTES element.
    pub max_bytes_element: usize,
    /// Longest an HTTP request may take from its headers to its answer.
    pub request_timeout: std::time::Duration,
}

/// What the server is built from.
pub struct Parts {
    pub sources: Vec<Box<dyn Source>>,
    pub defaults: ConfigDefaults,
    /// The route file (watched like the models), if any.
    pub routes: Option<PathBuf>,
    pub settings: Settings,
    /// The log filter and trace sampling that the extensions change at run time.
    pub telemetry: Arc<crate::telemetry::Controls>,
    /// Payload capture's sinks (`Capture::start`), if any are configured.
    pub capture: Option<Arc<crate::serve::capture::Capture>>,
    /// Where rollouts' outcomes are remembered across restarts, if anywhere.
    pub rollout_memory: Option<PathBuf>,
    /// Fleet mode: rollouts decided from Prometheus's fleet-wide numbers.
    pub fleet: Option<crate::control::fleet::Prometheus>,
}

/// The wired server: its edges (which hold the request path) and its control plane.
#[derive(Clone)]
pub struct App {
    pub edge: Arc<Edge>,
    pub control: Arc<Control>,
}

/// Assembles the layers: one catalog store shared by the request path (read),
/// the lifecycle and the canary controller (write).
pub fn build(parts: Parts, metrics: Metrics) -> App {
    let Parts {
        sources,
        defaults,
        routes,
        settings,
        telemetry,
        capture,
        rollout_memory,
        fleet,
    } = parts;
    let catalog = CatalogStore::new();
    let memory = crate::control::rollouts::Memory::new(rollout_memory);
    let lifecycle = Lifecycle::new(sources, defaults, metrics.clone())
        .with_routes(routes)
        .with_rollout_memory(memory.clone());
    let recorders = lifecycle.sources();
    let control = Control::new(
        lifecycle,
        catalog.clone(),
        metrics.clone(),
        settings.model_control,
    );
    let serving = Serving {
        catalog,
        traffic: Arc::new(Traffic::new(metrics.clone(), capture.clone())),
        capture,
        limits: RequestLimits {
            max_tensor_elements: settings.max_tensor_elements,
            max_bytes_element: settings.max_bytes_element,
        },
        metrics,
    };
    let edge = Edge::new(
        serving,
        control.clone(),
        Rollouts::new(memory, fleet, recorders),
        EdgeSettings {
            tokens: settings.tokens,
            max_request_bytes: settings.max_request_bytes,
            request_timeout: settings.request_timeout,
            mlflow_webhook_secret: settings.mlflow_webhook_secret,
        },
        telemetry,
        crate::edge::Readiness {
            strict: settings.strict_readiness,
            without_upstreams: settings.ready_without_upstreams,
        },
    );
    App { edge, control }
}

impl App {
    /// The first load at start-up. Returns the failures, by model.
    pub async fn load_all(&self) -> Result<Vec<(String, String)>, crate::error::ApiError> {
        let result = self.control.load_all().await;
        self.edge.mark_loaded();
        result
    }

    /// The catalog in force (tests and start-up logging).
    pub fn catalog(&self) -> Arc<crate::serve::catalog::Catalog> {
        self.edge.serving.catalog.snapshot()
    }
}

/// Logs a server task's failure; servers end quietly on shutdown.
async fn report<E: std::fmt::Display>(
    name: &'static str,
    server: impl Future<Output = Result<(), E>>,
) {
    if let Err(err) = server.await {
        warn!(server = name, error = %err, "Server failed.");
    }
}

/// Bound sockets for the three listeners (tests bind 127.0.0.1:0).
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub metrics: TcpListener,
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub grpc_max_message_bytes: usize,
    /// Time between readiness turning false and the listeners closing.
    pub drain_delay: Duration,
    /// Most time in-flight requests get once the listeners close.
    pub drain_timeout: Duration,
    /// Re-read the model sources this often (`None`: only at start and on API loads).
    pub poll_interval: Option<Duration>,
    /// Local folders to watch for changes (each change triggers a re-read).
    pub watch: Vec<std::path::PathBuf>,
    /// TLS for the HTTP and gRPC listeners (metrics stay plain).
    pub tls: Option<Arc<crate::edge::tls::Tls>>,
    /// Connection caps, timeouts and HTTP/2 limits for the HTTP and gRPC listeners.
    pub connections: crate::edge::conn::ConnectionSettings,
}

/// Serves until `shutdown` resolves, then drains: readiness false at once,
/// listeners closed after `drain_delay`, in-flight requests cut after `drain_timeout`.
pub async fn serve(
    app: App,
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let close = CancellationToken::new();
    let tasks = TaskTracker::new();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let service_name = switchyard_proto::SERVICE_NAME;
    {
        // Keeps grpc.health.v1 in step with readiness (model loads, draining).
        let health_reporter = health_reporter.clone();
        let edge = app.edge.clone();
        let close = close.clone();
        tasks.spawn(async move {
            let mut last = None;
            loop {
                let ready = edge.is_ready();
                if last != Some(ready) {
                    for name in ["", service_name] {
                        if ready {
                            health_reporter
                                .set_service_status(name, tonic_health::ServingStatus::Serving)
                                .await;
                        } else {
                            health_reporter
                                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                                .await;
                        }
                    }
                    last = Some(ready);
                }
                tokio::select! {
                    _ = close.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
    }

    let _watcher = crate::control::watch::watch_folders(&app.control, &options.watch);
    if let Some(interval) = options.poll_interval {
        tasks.spawn(app.control.clone().poll_sources(interval, close.clone()));
    }
    let serving = &app.edge.serving;
    tasks.spawn(crate::serve::traffic::run_shadow_workers(
        serving.traffic.clone(),
        close.clone(),
    ));
    tasks.spawn(crate::control::rollouts::run_controller(
        app.edge.rollouts.clone(),
        serving.catalog.clone(),
        serving.traffic.clone(),
        serving.metrics.clone(),
        close.clone(),
    ));

    let servers = TaskTracker::new();
    let router = crate::edge::http::router(app.edge.clone());
    let inference =
        switchyard_proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(
            crate::edge::grpc::GrpcService::new(app.edge.clone()),
        )
        // Compressed requests are taken (the size limit applies to the
        // inflated message); answers stay uncompressed: Python's gRPC advertises
        // gzip on every call, and compressing every answer would cost every client.
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Deflate)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .max_decoding_message_size(options.grpc_max_message_bytes)
        .max_encoding_message_size(options.grpc_max_message_bytes);
    let limits = options.connections.clone();
    let grpc_server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(tower::util::MapResponseLayer::new(
            crate::error::classify_tonic_errors::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(inference);
    let http_admission = Admission::new("http", limits.max_connections, serving.metrics.clone());
    let grpc_admission = Admission::new("grpc", limits.max_connections, serving.metrics.clone());
    match &options.tls {
        None => {
            let incoming = TcpIncoming {
                listener: listeners.http,
                admission: http_admission,
            };
            let http = serve_http(incoming, router, limits.clone(), close.clone());
            servers.spawn(report("HTTP", http));
            let incoming = crate::edge::conn::grpc_incoming(listeners.grpc, grpc_admission);
            let grpc =
                grpc_server.serve_with_incoming_shutdown(incoming, close.clone().cancelled_owned());
            servers.spawn(report("gRPC", grpc));
        }
        Some(tls) => {
            tasks.spawn(tls.clone().watch(close.clone()));
            let incoming = tls.http_incoming(
                listeners.http,
                http_admission,
                limits.max_tls_handshakes,
                close.clone(),
            );
            let http = serve_http(incoming, router, limits.clone(), close.clone());
            servers.spawn(report("HTTPS", http));
            let incoming = tls.grpc_incoming(
                listeners.grpc,
                grpc_admission,
                limits.max_tls_handshakes,
                close.clone(),
            );
            let grpc =
                grpc_server.serve_with_incoming_shutdown(incoming, close.clone().cancelled_owned());
            servers.spawn(report("gRPC (TLS)", grpc));
        }
    }
    let metrics = axum::serve(
        listeners.metrics,
        crate::edge::http::metrics_router(serving.metrics.clone()),
    )
    .with_graceful_shutdown(close.clone().cancelled_owned());
    servers.spawn(report("Metrics", metrics.into_future()));
    servers.close();

    shutdown.await;
    app.edge.start_draining();
    for name in ["", service_name] {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    info!(drain_delay = ?options.drain_delay, "Shutting down: readiness is false.");
    tokio::time::sleep(options.drain_delay).await;
    close.cancel();
    tasks.close();
    info!(drain_timeout = ?options.drain_timeout, "Listeners closed; draining in-flight requests.");
    if tokio::time::timeout(options.drain_timeout, servers.wait())
        .await
        .is_err()
    {
        warn!("Drain timeout reached; dropping requests still in flight.");
    }
    tasks.wait().await;
    if let Some(capture) = &app.edge.serving.capture {
        // What the last requests left in the queues is written before exit.
        capture.shutdown(Duration::from_secs(5)).await;
    }
    info!("Shutdown complete.");
    Ok(())
}
