//! Command-line flags (each also a `SWITCHYARD_*` environment variable): how
//! the process runs. What it serves lives in the model repository.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchyard_runtimes::onnx::OnnxOptions;

use crate::config::model::ConfigDefaults;

pub use crate::telemetry::LogFormat;

/// The model sources, in the order given.
pub type Sources = Vec<Box<dyn crate::control::source::Source>>;

pub use crate::sched::IoScheduling;

/// Switchyard: a KServe v2 model-serving gateway. Without a subcommand it serves.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchyard",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Time a model's runtime in process, with no server: the ceiling for benchmarks.
    BenchRuntime(crate::app::bench::BenchArgs),
    /// Print what libtorch found (its CUDA part, devices, cuDNN) as JSON.
    #[cfg(feature = "torch")]
    TorchInfo,
}

/// How the server runs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Where models come from (repeatable; comma-separated in the env var): a folder
    /// (`<dir>/<model>/<version>/model.onnx` with `config.yaml` or Triton's `config.pbtxt`),
    /// `s3://bucket/prefix` (credentials and endpoint from `AWS_*`), or
    /// `mlflow://host:port/<model>@<alias>` / `mlflow://host:port/<model>/<version>`.
    #[arg(
        long,
        env = "SWITCHYARD_MODEL_REPOSITORY",
        default_value = "models",
        value_delimiter = ','
    )]
    pub model_repository: Vec<String>,

    /// How often the model sources are re-read (local folders are also watched).
    #[arg(long, env = "SWITCHYARD_REPOSITORY_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub repository_poll_interval: Duration,

    /// Where models fetched from S3 or MLflow are kept.
    #[arg(long, env = "SWITCHYARD_MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,

    /// Shared secret for MLflow registry webhooks (POST /v2/repository/webhooks/mlflow);
    /// a verified delivery re-reads the sources at once. Unset: the endpoint is off.
    #[arg(long, env = "SWITCHYARD_MLFLOW_WEBHOOK_SECRET", hide_env_values = true)]
    pub mlflow_webhook_secret: Option<String>,

    /// Fleet mode: every replica judges rollouts from the fleet-wide numbers
    /// this Prometheus scrapes from all of them, read at the same aligned
    /// boundaries, so all replicas reach the same decisions (see the README).
    /// Unset: each replica judges its own traffic.
    #[arg(long, env = "SWITCHYARD_FLEET_PROMETHEUS")]
    pub fleet_prometheus: Option<String>,

    /// Fleet mode: PromQL label matchers selecting the replicas' scrape targets.
    #[arg(
        long,
        env = "SWITCHYARD_FLEET_SELECTOR",
        default_value = "job=\"switchyard\""
    )]
    pub fleet_selector: String,

    /// Fleet mode: how long after a boundary it is read (longer than the
    /// scrape interval plus a scrape's duration, shorter than the rollout intervals).
    #[arg(long, env = "SWITCHYARD_FLEET_SETTLE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub fleet_settle: Duration,

    /// Route file: endpoints with weighted variants, stickiness, shadows and canary
    /// policies (re-read with the models; a bad file keeps the previous routes).
    /// Default: `routes.yaml` in the first local model repository, if present.
    #[arg(long, env = "SWITCHYARD_ROUTES")]
    pub routes: Option<PathBuf>,

    /// File of bearer tokens (one per line) that may call inference and metadata.
    #[arg(long, env = "SWITCHYARD_INFERENCE_TOKENS_FILE")]
    pub inference_tokens_file: Option<PathBuf>,

    /// Comma-separated inference tokens (prefer the file: environments leak).
    #[arg(long, env = "SWITCHYARD_INFERENCE_TOKENS", hide_env_values = true)]
    pub inference_tokens: Option<String>,

    /// File of admin bearer tokens (everything, including model control). Setting
    /// any admin token also closes inference to requests without a token.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKENS_FILE")]
    pub admin_tokens_file: Option<PathBuf>,

    /// Comma-separated admin tokens.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKENS", hide_env_values = true)]
    pub admin_tokens: Option<String>,

    /// PEM certificate chain: serve HTTP and gRPC over TLS (re-read when the file changes).
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "SWITCHYARD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Longest an HTTP request may take, body upload included (slow clients get 408).
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Largest number of elements one input tensor may have.
    #[arg(long, env = "SWITCHYARD_MAX_TENSOR_ELEMENTS", default_value_t = 1 << 28)]
    pub max_tensor_elements: usize,

    /// Longest single BYTES (string) element, in bytes.
    #[arg(long, env = "SWITCHYARD_MAX_BYTES_ELEMENT", default_value_t = 16 << 20)]
    pub max_bytes_element: usize,

    /// In local folders, take a version only once `<version>/READY` exists.
    #[arg(long, env = "SWITCHYARD_REQUIRE_READY_MARKER")]
    pub require_ready_marker: bool,

    /// Address for the KServe v2 REST API.
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,

    /// Address for the KServe v2 gRPC API and grpc.health.v1.
    #[arg(long, env = "SWITCHYARD_GRPC_ADDR", default_value = "0.0.0.0:8001")]
    pub grpc_addr: SocketAddr,

    /// Address for Prometheus metrics (`/metrics`).
    #[arg(long, env = "SWITCHYARD_METRICS_ADDR", default_value = "0.0.0.0:8002")]
    pub metrics_addr: SocketAddr,

    /// Largest HTTP request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "SWITCHYARD_MAX_REQUEST_BYTES", default_value_t = 64 << 20)]
    pub max_request_bytes: usize,

    /// Largest gRPC message accepted or sent, in bytes (gRPC's own default is only 4 MiB).
    #[arg(long, env = "SWITCHYARD_GRPC_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub grpc_max_message_bytes: usize,

    /// Log line format.
    #[arg(
        long,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// OTLP/gRPC collector to send trace spans to (e.g. `http://otel-collector:4317`).
    #[arg(long, env = "SWITCHYARD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Share of new traces sampled, 0 to 1 (a caller's sampled `traceparent` is
    /// followed; 0 turns tracing off). Changeable at run time: `/v2/trace/setting`.
    #[arg(long, env = "SWITCHYARD_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,switchyard=debug`).
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,

    /// Path of libonnxruntime.so (default: ORT_DYLIB_PATH, then beside the binary, then the system search path).
    #[arg(long, env = "SWITCHYARD_ONNXRUNTIME_LIBRARY")]
    pub onnxruntime_library: Option<PathBuf>,

    /// Allow loading and unloading models through the repository API.
    #[arg(long, env = "SWITCHYARD_ENABLE_MODEL_CONTROL")]
    pub enable_model_control: bool,

    /// Report ready only when every model in the repository has a version serving.
    #[arg(long, env = "SWITCHYARD_STRICT_READINESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_readiness: bool,

    /// With strict readiness, leave out models served by remote upstreams: the
    /// server stays ready while an upstream pool is down and answers 503 for
    /// those models (a standalone gateway; in a sidecar, keep it false so the
    /// pod is ready when its model server is).
    #[arg(long, env = "SWITCHYARD_READY_WITHOUT_UPSTREAMS", default_value_t = false, action = clap::ArgAction::Set)]
    pub ready_without_upstreams: bool,

    /// Exit at start-up when any model fails to load (otherwise serve the
    /// rest). A remote model whose upstreams are not up yet never counts: it
    /// answers 503 and loads when they come up.
    #[arg(long, env = "SWITCHYARD_EXIT_ON_ERROR", default_value_t = true, action = clap::ArgAction::Set)]
    pub exit_on_error: bool,

    /// Requests that may wait per model version before new ones get 429 (models may override).
    #[arg(long, env = "SWITCHYARD_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,

    /// The longest any request may wait and run, whatever its timeout: one still
    /// unanswered then gets 504 / DEADLINE_EXCEEDED and is counted
    /// (`switchyard_queue_rejections_total{reason="max_request_time"}`), so no
    /// request can hold a queue place forever (models may override with
    /// `queue.max_request_time_us`).
    #[arg(long, env = "SWITCHYARD_MAX_REQUEST_TIME", default_value = "300s", value_parser = humantime::parse_duration)]
    pub max_request_time: Duration,

    /// Threads that run the HTTP and gRPC edges (I/O, decoding, encoding);
    /// model instances run on threads of their own. Default: the cores this
    /// process may use (its CPU affinity and cgroup quota).
    #[arg(long, env = "SWITCHYARD_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub io_threads: Option<u16>,

    /// How the kernel schedules the I/O threads beside the model instances
    /// on a shared core: `batch` (SCHED_BATCH: a woken I/O thread does not
    /// preempt a running model, so replies and new requests are handled in
    /// bursts instead of one switch each) or `normal`.
    #[arg(
        long,
        env = "SWITCHYARD_IO_SCHEDULING",
        value_enum,
        default_value = "batch"
    )]
    pub io_scheduling: IoScheduling,

    /// ONNX Runtime intra-op threads per model instance (models may override).
    #[arg(long, env = "SWITCHYARD_ONNX_INTRA_OP_THREADS", default_value_t = 1)]
    pub onnx_intra_op_threads: usize,

    /// ONNX Runtime inter-op threads per model instance (models may override).
    #[arg(long, env = "SWITCHYARD_ONNX_INTER_OP_THREADS", default_value_t = 1)]
    pub onnx_inter_op_threads: usize,

    /// Let idle ONNX Runtime threads spin (lower latency, burns CPU).
    #[arg(long, env = "SWITCHYARD_ONNX_SPINNING")]
    pub onnx_spinning: bool,

    /// libtorch's CPU threads for the whole process (TorchScript models on the CPU share them).
    #[cfg(feature = "torch")]
    #[arg(long, env = "SWITCHYARD_TORCH_THREADS", default_value_t = 1)]
    pub torch_threads: usize,

    /// After SIGTERM, how long to keep serving (readiness already false) before closing listeners.
    #[arg(long, env = "SWITCHYARD_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// After closing listeners, the most time in-flight requests get to finish.
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Open connections per listener (HTTP, gRPC); more are closed at once
    /// and counted in switchyard_connections_refused_total.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// HTTP/1: time a client has to send a request's headers, counted from when
    /// the connection waits for them (so idle keep-alive connections close after it too).
    #[arg(long, env = "SWITCHYARD_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// HTTP/2 and gRPC: concurrent streams (requests) per connection.
    #[arg(
        long,
        env = "SWITCHYARD_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub max_concurrent_streams: u32,

    /// HTTP/2 and gRPC: ping a peer this often; it is dropped when a ping is
    /// not answered within --keepalive-timeout.
    #[arg(long, env = "SWITCHYARD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    #[arg(long, env = "SWITCHYARD_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// Payload capture: write sampled request/response records (models' and
    /// endpoints' `capture:` policies) as JSON Lines files in this folder.
    #[arg(long, env = "SWITCHYARD_CAPTURE_DIR")]
    pub capture_dir: Option<PathBuf>,

    /// A capture file is rotated at this size (bytes).
    #[arg(long, env = "SWITCHYARD_CAPTURE_MAX_FILE_BYTES", default_value_t = 100 << 20)]
    pub capture_max_file_bytes: u64,

    /// ... or when it has been open this long.
    #[arg(long, env = "SWITCHYARD_CAPTURE_ROTATE_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub capture_rotate_interval: Duration,

    /// Rotated capture files kept (the oldest are deleted).
    #[arg(long, env = "SWITCHYARD_CAPTURE_KEEP_FILES", default_value_t = 24)]
    pub capture_keep_files: usize,

    /// Payload capture: post records as CloudEvents (KServe's logger format) to this URL.
    #[arg(long, env = "SWITCHYARD_CAPTURE_URL")]
    pub capture_url: Option<String>,

    /// Bearer token for --capture-url, read from this file (never logged).
    #[arg(long, env = "SWITCHYARD_CAPTURE_TOKEN_FILE")]
    pub capture_token_file: Option<PathBuf>,

    /// CA bundle for an https --capture-url.
    #[arg(long, env = "SWITCHYARD_CAPTURE_CA_FILE")]
    pub capture_ca_file: Option<PathBuf>,

    /// `ce-source` of the capture events.
    #[arg(long, env = "SWITCHYARD_CAPTURE_SOURCE", default_value = "switchyard")]
    pub capture_source: String,

    /// Records waiting per capture sink; beyond it records are dropped and counted.
    #[arg(long, env = "SWITCHYARD_CAPTURE_QUEUE", default_value_t = 10_000)]
    pub capture_queue: usize,

    /// How long a failing capture delivery is retried before its record is dropped.
    #[arg(long, env = "SWITCHYARD_CAPTURE_RETRY_FOR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub capture_retry_for: Duration,

    /// TLS handshakes in progress per listener; more connections are closed at once.
    #[arg(long, env = "SWITCHYARD_MAX_TLS_HANDSHAKES", default_value_t = 256)]
    pub max_tls_handshakes: usize,
}

impl Config {
    /// Where capture records go.
    pub fn capture(&self) -> Result<crate::serve::capture::CaptureSettings, String> {
        let token = match &self.capture_token_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|err| format!("--capture-token-file {}: {err}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
        };
        Ok(crate::serve::capture::CaptureSettings {
            dir: self.capture_dir.clone(),
            max_file_bytes: self.capture_max_file_bytes,
            rotate_interval: self.capture_rotate_interval,
            keep_files: self.capture_keep_files,
            url: self.capture_url.clone(),
            token,
            ca_file: self.capture_ca_file.clone(),
            source: self.capture_source.clone(),
            queue: self.capture_queue,
            retry_for: self.capture_retry_for,
            ..Default::default()
        })
    }

    /// The listeners' connection limits.
    pub fn connections(&self) -> crate::edge::conn::ConnectionSettings {
        crate::edge::conn::ConnectionSettings {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_tls_handshakes: self.max_tls_handshakes,
        }
    }

    /// Checks what clap cannot; run before binding any port.
    pub fn validate(&self) -> Result<(), String> {
        for repository in &self.model_repository {
            if let Some(path) = crate::control::source::local_path(repository)
                && !path.is_dir()
            {
                return Err(format!(
                    "--model-repository {repository} is not a directory"
                ));
            }
        }
        if self.repository_poll_interval < Duration::from_millis(50) {
            return Err("--repository-poll-interval must be at least 50ms".to_owned());
        }
        if self.max_request_time.is_zero() {
            return Err("--max-request-time must be positive".to_owned());
        }
        if self.queue_capacity == 0 {
            return Err("--queue-capacity must be at least 1".to_owned());
        }
        if self.max_request_bytes == 0 || self.grpc_max_message_bytes == 0 {
            return Err(
                "--max-request-bytes and --grpc-max-message-bytes must be positive".to_owned(),
            );
        }
        if self.max_connections == 0
            || self.max_concurrent_streams == 0
            || self.max_tls_handshakes == 0
        {
            return Err(
                "--max-connections, --max-concurrent-streams and --max-tls-handshakes must be positive"
                    .to_owned(),
            );
        }
        if self.header_read_timeout.is_zero()
            || self.keepalive_interval.is_zero()
            || self.keepalive_timeout.is_zero()
        {
            return Err(
                "--header-read-timeout, --keepalive-interval and --keepalive-timeout must be positive"
                    .to_owned(),
            );
        }
        let addrs = [self.http_addr, self.grpc_addr, self.metrics_addr];
        for (i, a) in addrs.iter().enumerate() {
            if a.port() != 0 && addrs[..i].contains(a) {
                return Err(format!("address {a} is given for two listeners"));
            }
        }
        Ok(())
    }

    /// TLS settings, loaded and checked before any port is bound.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<crate::edge::tls::Tls>>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::edge::tls::Tls::load(crate::edge::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })
            .map(Some),
            _ => Ok(None),
        }
    }

    /// The configured bearer tokens (read before any port is bound).
    pub fn tokens(&self) -> Result<crate::edge::auth::Tokens, String> {
        let inference = crate::edge::auth::read_tokens(
            self.inference_tokens_file.as_deref(),
            self.inference_tokens.as_deref(),
        )?;
        let admin = crate::edge::auth::read_tokens(
            self.admin_tokens_file.as_deref(),
            self.admin_tokens.as_deref(),
        )?;
        Ok(crate::edge::auth::Tokens::new(&inference, &admin))
    }

    /// The cache folder for fetched models.
    pub fn cache_dir(&self) -> PathBuf {
        self.model_cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("switchyard-model-cache"))
    }

    /// Logging and tracing settings.
    pub fn telemetry(&self) -> crate::telemetry::TelemetryConfig {
        crate::telemetry::TelemetryConfig {
            log: self.log.clone(),
            log_format: self.log_format,
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sample_ratio: self.trace_sample_ratio,
        }
    }

    /// Fleet mode's settings, when `--fleet-prometheus` is set.
    pub fn fleet(&self) -> Option<crate::control::fleet::FleetConfig> {
        let prometheus = self.fleet_prometheus.clone()?;
        Some(crate::control::fleet::FleetConfig {
            prometheus,
            selector: self.fleet_selector.clone(),
            settle: self.fleet_settle,
            timeout: self
                .fleet_settle
                .clamp(Duration::from_millis(500), Duration::from_secs(10)),
        })
    }

    /// The per-request settings (tokens are read from their files here).
    pub fn settings(&self) -> Result<crate::app::Settings, String> {
        Ok(crate::app::Settings {
            model_control: self.enable_model_control,
            strict_readiness: self.strict_readiness,
            ready_without_upstreams: self.ready_without_upstreams,
            max_request_bytes: self.max_request_bytes,
            mlflow_webhook_secret: self.mlflow_webhook_secret.clone(),
            tokens: self.tokens()?,
            max_tensor_elements: self.max_tensor_elements,
            max_bytes_element: self.max_bytes_element,
            request_timeout: self.request_timeout,
        })
    }

    /// The model sources, and the local folders among them (to watch).
    pub fn sources(&self) -> Result<(Sources, Vec<PathBuf>), String> {
        let cache_dir = self.cache_dir();
        let mut sources: Sources = Vec::new();
        let mut watched = Vec::new();
        for uri in &self.model_repository {
            match crate::control::source::local_path(uri) {
                Some(path) => {
                    let local = crate::control::source::local::LocalSource::new(&path)?
                        .with_ready_marker(self.require_ready_marker);
                    watched.push(path);
                    sources.push(Box::new(local));
                }
                None => sources.push(crate::control::source::from_uri(uri, &cache_dir)?),
            }
        }
        Ok((sources, watched))
    }

    pub fn model_defaults(&self) -> ConfigDefaults {
        ConfigDefaults {
            queue_capacity: self.queue_capacity,
            max_request_time: self.max_request_time,
            onnx: OnnxOptions {
                intra_op_threads: self.onnx_intra_op_threads,
                inter_op_threads: self.onnx_inter_op_threads,
                spinning: self.onnx_spinning,
            },
        }
    }
}
