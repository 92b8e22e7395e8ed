//! The `switchyard` binary: parse flags, validate, load models, bind, serve.

use std::process::ExitCode;

use clap::Parser;
use switchyard::app::cli::{Cli, Command, Config};
use switchyard::app::{Parts, build};
use switchyard::metrics::Metrics;
use switchyard::{Listeners, ServeOptions, serve};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives between
/// "Listening." and the start of serving must drain, not kill the process.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let installing = |kind: SignalKind| {
            signal(kind).map_err(|err| format!("installing a signal handler: {err}"))
        };
        let mut term = installing(SignalKind::terminate())?;
        let mut int = installing(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("Shutdown signal received.");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        info!("Shutdown signal received.");
    })
}

async fn run(
    config: Config,
    telemetry: std::sync::Arc<switchyard::telemetry::Controls>,
) -> Result<(), String> {
    config.validate()?;
    let shutdown = shutdown_signal()?;
    // A named library must load; a missing default one only stops ONNX models
    // (each then fails to load, with this reason), so a TorchScript- or
    // remote-only deployment need not ship ONNX Runtime.
    if let Err(err) = switchyard_runtimes::onnx::init(config.onnxruntime_library.as_deref()) {
        if config.onnxruntime_library.is_some() {
            return Err(err.to_string());
        }
        tracing::warn!(error = %err, "ONNX Runtime is not available; ONNX models will not load.");
    }
    #[cfg(feature = "torch")]
    {
        switchyard_runtimes::torch::init(config.torch_threads);
        let status = switchyard_runtimes::torch::cuda_status();
        info!(
            cuda = status.cuda_available,
            devices = status.device_count,
            threads = status.intra_op_threads,
            "libtorch ready."
        );
    }
    let tls = config.tls()?;
    let (sources, watched) = config.sources()?;
    let metrics = Metrics::new().map_err(|err| format!("setting up metrics: {err}"))?;
    let routes = config
        .routes
        .clone()
        .or_else(|| watched.first().map(|dir| dir.join("routes.yaml")));
    let app = build(
        Parts {
            sources,
            defaults: config.model_defaults(),
            routes,
            settings: config.settings()?,
            telemetry,
            capture: switchyard::serve::capture::Capture::start(
                &config.capture()?,
                metrics.clone(),
            )?,
            rollout_memory: Some(config.cache_dir().join("rollouts.json")),
            fleet: config
                .fleet()
                .map(switchyard::control::fleet::Prometheus::new)
                .transpose()?,
        },
        metrics,
    );
    // Bound before the first load: liveness answers at once (a native
    // sidecar's startup probe passes before its model server starts), while
    // readiness waits for the load.
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|err| format!("binding {addr}: {err}"))
    };
    let listeners = Listeners {
        http: bind(config.http_addr).await?,
        grpc: bind(config.grpc_addr).await?,
        metrics: bind(config.metrics_addr).await?,
    };
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let addresses = (
        local(&listeners.http),
        local(&listeners.grpc),
        local(&listeners.metrics),
    );
    info!(http = %addresses.0, grpc = %addresses.1, metrics = %addresses.2, "Live; loading models.");
    let (fatal, load_failed) = tokio::sync::oneshot::channel::<String>();
    let loading = {
        let app = app.clone();
        let exit_on_error = config.exit_on_error;
        tokio::spawn(async move {
            let failures = match app.load_all().await {
                Ok(failures) => failures,
                Err(err) => {
                    let _ = fatal.send(err.to_string());
                    return;
                }
            };
            let (waiting, failed): (Vec<_>, Vec<_>) = failures
                .into_iter()
                .partition(|(_, reason)| switchyard::serve::model::is_waiting_for_upstream(reason));
            for (model, reason) in &waiting {
                warn!(model, %reason, "Upstream not up yet; the model answers 503 until it is.");
            }
            if !failed.is_empty() {
                let summary: Vec<String> = failed
                    .iter()
                    .map(|(model, reason)| format!("{model}: {reason}"))
                    .collect();
                if exit_on_error {
                    let _ = fatal.send(format!(
                        "models failed to load (pass --exit-on-error=false to serve the rest): {}",
                        summary.join("; ")
                    ));
                    return;
                }
                error!(failures = %summary.join("; "), "Some models failed to load; serving the rest.");
            }
            info!(
                http = %addresses.0,
                grpc = %addresses.1,
                metrics = %addresses.2,
                models = app.catalog().models.len(),
                "Listening."
            );
        })
    };
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let shutdown = {
        let failure = failure.clone();
        async move {
            tokio::pin!(shutdown);
            tokio::select! {
                () = &mut shutdown => {}
                reason = load_failed => {
                    if let Ok(reason) = reason {
                        error!(error = %reason, "Stopping: the first load failed.");
                        if let Ok(mut slot) = failure.lock() {
                            *slot = Some(reason);
                        }
                    } else {
                        // The load finished without a fatal failure: wait for the signal.
                        shutdown.await;
                    }
                }
            }
        }
    };
    serve(
        app,
        listeners,
        ServeOptions {
            grpc_max_message_bytes: config.grpc_max_message_bytes,
            drain_delay: config.drain_delay,
            drain_timeout: config.drain_timeout,
            poll_interval: Some(config.repository_poll_interval),
            watch: watched,
            tls,
            connections: config.connections(),
        },
        shutdown,
    )
    .await
    .map_err(|err| err.to_string())?;
    loading.abort();
    match failure.lock().ok().and_then(|mut slot| slot.take()) {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    switchyard::memory::tune_allocator();
    let cli = Cli::parse();
    #[cfg(feature = "torch")]
    if let Some(Command::TorchInfo) = &cli.command {
        let status = switchyard_runtimes::torch::cuda_status();
        println!("{}", serde_json::to_string(&status).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::BenchRuntime(args)) = &cli.command {
        return match switchyard::app::bench::run(args) {
            Ok(results) => {
                switchyard::app::bench::print(args, &results);
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("switchyard bench-runtime: {err}");
                ExitCode::from(2)
            }
        };
    }
    let config = cli.serve;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.io_threads {
        builder.worker_threads(usize::from(threads));
    }
    let scheduling = config.io_scheduling;
    builder.on_thread_start(move || scheduling.apply_to_this_thread());
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("switchyard: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = match switchyard::telemetry::init(&config.telemetry()) {
            Ok(telemetry) => telemetry,
            Err(err) => {
                eprintln!("switchyard: {err}");
                return ExitCode::from(2);
            }
        };
        let result = run(config, telemetry.controls.clone()).await;
        telemetry.shutdown();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                error!(error = %err, "Exiting.");
                eprintln!("switchyard: {err}");
                ExitCode::from(2)
            }
        }
    })
}
