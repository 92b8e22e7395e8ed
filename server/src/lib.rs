//! Switchyard's server: model repository and catalog, the HTTP and gRPC edges,
//! metrics, and the serve/shutdown life cycle. Entry point: `serve`.

pub mod auth;
pub mod batcher;
pub mod bench;
pub mod catalog;
pub mod config;
pub mod config_file;
pub mod error;
pub mod fuzz_targets;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod model_config;
pub mod pbtxt;
pub mod repository;
pub mod routing;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::state::AppState;

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
    pub tls: Option<Arc<tls::Tls>>,
}

/// Serves until `shutdown` resolves, then drains: readiness false at once,
/// listeners closed after `drain_delay`, in-flight requests cut after `drain_timeout`.
pub async fn serve(
    state: Arc<AppState>,
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
        let state = state.clone();
        let close = close.clone();
        tasks.spawn(async move {
            let mut last = None;
            loop {
                let ready = state.is_ready();
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

    let _watcher = state::watch_folders(&state, &options.watch);
    if let Some(interval) = options.poll_interval {
        tasks.spawn(state.clone().poll_sources(interval, close.clone()));
    }
    tasks.spawn(traffic::run_shadow_workers(state.clone(), close.clone()));
    tasks.spawn(traffic::run_canary_controller(state.clone(), close.clone()));

    let servers = TaskTracker::new();
    let router = http::router(state.clone());
    let inference =
        switchyard_proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(
            grpc::GrpcService::new(state.clone()),
        )
        .max_decoding_message_size(options.grpc_max_message_bytes)
        .max_encoding_message_size(options.grpc_max_message_bytes);
    let grpc_server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            grpc::classify_decode_errors::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(inference);
    let stopped = close.clone().cancelled_owned();
    match &options.tls {
        None => {
            // Small request/response exchanges: Nagle's algorithm would add ~40 ms stalls.
            let listener = axum::serve::ListenerExt::tap_io(listeners.http, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let http = axum::serve(listener, router).with_graceful_shutdown(stopped);
            servers.spawn(report("HTTP", http.into_future()));
            let incoming = tonic::transport::server::TcpIncoming::from(listeners.grpc)
                .with_nodelay(Some(true));
            let grpc =
                grpc_server.serve_with_incoming_shutdown(incoming, close.clone().cancelled_owned());
            servers.spawn(report("gRPC", grpc));
        }
        Some(tls) => {
            tasks.spawn(tls.clone().watch(close.clone()));
            let listener = tls.http_listener(listeners.http, close.clone())?;
            let http = axum::serve(listener, router).with_graceful_shutdown(stopped);
            servers.spawn(report("HTTPS", http.into_future()));
            let incoming = tls.grpc_incoming(listeners.grpc, close.clone());
            let grpc =
                grpc_server.serve_with_incoming_shutdown(incoming, close.clone().cancelled_owned());
            servers.spawn(report("gRPC (TLS)", grpc));
        }
    }
    let metrics = axum::serve(listeners.metrics, http::metrics_router(state.clone()))
        .with_graceful_shutdown(close.clone().cancelled_owned());
    servers.spawn(report("Metrics", metrics.into_future()));
    servers.close();

    shutdown.await;
    state.start_draining();
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
    info!("Shutdown complete.");
    Ok(())
}
