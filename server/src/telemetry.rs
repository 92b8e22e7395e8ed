//! Logging and tracing set-up: `tracing` to stderr (text or JSON) and, when
//! an OTLP endpoint is given, spans exported over OTLP/gRPC. W3C
//! `traceparent` headers (HTTP) and metadata (gRPC) become the parent of the
//! request's span, so Switchyard's spans join the caller's trace.
//! `Controls` is what may change while the process runs (the log filter and
//! the trace sampling ratio); the trace and logging extensions drive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, ShouldSample};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `init` needs (from flags).
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Log filter, in `tracing` EnvFilter syntax.
    pub log: String,
    pub log_format: LogFormat,
    /// OTLP/gRPC collector for trace spans.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled (a caller's sampled `traceparent` is always followed).
    pub trace_sample_ratio: f64,
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// What may change while the process runs: the log filter and the trace
/// sampling ratio. `init` gives the live one; `detached` (tests, embedders
/// with their own subscriber) keeps the settings without a subscriber.
pub struct Controls {
    log_filter: Mutex<String>,
    log_format: LogFormat,
    reload: Option<Reload>,
    /// `f64` bits; NaN-free, in [0, 1]. Zero turns tracing off.
    sample_ratio: Arc<AtomicU64>,
    /// What the process started with (a cleared trace setting returns to it).
    initial_ratio: f64,
    exporting: bool,
}

impl Controls {
    pub fn detached(config: &TelemetryConfig) -> Arc<Self> {
        Arc::new(Controls::new(config, None))
    }

    fn new(config: &TelemetryConfig, reload: Option<Reload>) -> Self {
        let ratio = clamp_ratio(config.trace_sample_ratio);
        Controls {
            log_filter: Mutex::new(config.log.clone()),
            log_format: config.log_format,
            reload,
            sample_ratio: Arc::new(AtomicU64::new(ratio.to_bits())),
            initial_ratio: ratio,
            exporting: config.otlp_endpoint.is_some(),
        }
    }

    /// The log filter in force, in EnvFilter syntax.
    pub fn log_filter(&self) -> String {
        self.log_filter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// Replaces the log filter; takes effect for the next log line.
    pub fn set_log_filter(&self, filter: &str) -> Result<(), String> {
        let parsed =
            EnvFilter::try_new(filter).map_err(|err| format!("log filter {filter:?}: {err}"))?;
        let mut current = self
            .log_filter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reload) = &self.reload {
            reload(parsed)?;
        }
        *current = filter.to_owned();
        Ok(())
    }

    pub fn sample_ratio(&self) -> f64 {
        f64::from_bits(self.sample_ratio.load(Ordering::Relaxed))
    }

    pub fn initial_sample_ratio(&self) -> f64 {
        self.initial_ratio
    }

    /// Sets the share of new traces sampled, from the next request on.
    pub fn set_sample_ratio(&self, ratio: f64) -> Result<(), String> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!(
                "a trace sample ratio is between 0 and 1, got {ratio}"
            ));
        }
        self.sample_ratio.store(ratio.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// Whether spans leave the process at all (`--otlp-endpoint`).
    pub fn exporting(&self) -> bool {
        self.exporting
    }
}

fn clamp_ratio(ratio: f64) -> f64 {
    if ratio.is_nan() {
        1.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

/// Parent-based sampling with a ratio read per new trace, so the trace
/// extension changes it without rebuilding the provider. Ratio zero drops
/// every span, a caller's sampled parent included ("tracing off").
#[derive(Debug, Clone)]
struct LiveRatioSampler(Arc<AtomicU64>);

impl ShouldSample for LiveRatioSampler {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        let ratio = f64::from_bits(self.0.load(Ordering::Relaxed));
        let sampler = if ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        };
        sampler.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Keeps the exporter alive; `shutdown` flushes the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    pub controls: Arc<Controls>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("switchyard: flushing traces: {err}");
        }
    }
}

/// Installs the subscriber. The OTLP exporter needs the tokio runtime: call
/// this inside it.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, String> {
    let filter =
        EnvFilter::try_new(&config.log).map_err(|err| format!("--log {:?}: {err}", config.log))?;
    if !(0.0..=1.0).contains(&config.trace_sample_ratio) {
        return Err(format!(
            "--trace-sample-ratio {} is not between 0 and 1",
            config.trace_sample_ratio
        ));
    }
    let (filter, reload_handle) = tracing_subscriber::reload::Layer::new(filter);
    let reload: Reload = Box::new(move |filter| {
        reload_handle
            .reload(filter)
            .map_err(|err| format!("replacing the log filter: {err}"))
    });
    let controls = Arc::new(Controls::new(config, Some(reload)));
    let provider = match &config.otlp_endpoint {
        None => None,
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|err| format!("--otlp-endpoint {endpoint}: {err}"))?;
            let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("switchyard")
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_sampler(LiveRatioSampler(controls.sample_ratio.clone()))
                    .with_span_processor(processor)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("switchyard")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match config.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|err| format!("installing the log subscriber: {err}"))?;
    Ok(Telemetry { provider, controls })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector(Option<String>);

impl opentelemetry::propagation::Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The W3C `traceparent` of `span`, to pass to upstream services (`None`
/// when tracing is off or the span is not sampled).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut injector = HeaderInjector(None);
    TraceContextPropagator::new().inject_context(&context, &mut injector);
    injector.0
}

/// Makes the caller's `traceparent` (if any) the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if headers.contains_key("traceparent") {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(context);
    }
}
