//! Every metric the server exports: names, label sets and buckets live here
//! and nowhere else. Labels stay low-cardinality (model, version, protocol,
//! outcome); unknown model names are never used as label values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ErrorKind;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Batch sizes in rows.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    model_ready: IntGaugeVec,
    queue_depth: IntGaugeVec,
    queue_time: HistogramVec,
    compute_time: HistogramVec,
    batch_size: HistogramVec,
    rejections: IntCounterVec,
    model_loads: IntCounterVec,
    model_load_time: HistogramVec,
    source_errors: IntCounterVec,
    source_up: IntGaugeVec,
    endpoint_requests: IntCounterVec,
    endpoint_latency: HistogramVec,
    pipeline_steps: HistogramVec,
    shadow_dropped: IntCounterVec,
    shadow_comparisons: IntCounterVec,
    shadow_abs_diff: HistogramVec,
    shadow_argmax_rows: IntCounterVec,
    shadow_mean_abs_diff: HistogramVec,
    shadow_requests_compared: IntCounterVec,
    canary_decisions: IntCounterVec,
    canary_weight: prometheus::GaugeVec,
    rollout_phase: IntGaugeVec,
    rollout_time: HistogramVec,
    rollout_position: IntGaugeVec,
    rollout_failed_checks: IntGaugeVec,
    rollout_outcome: IntGaugeVec,
    fleet_reads: IntCounterVec,
    routes_errors: prometheus::IntCounter,
    in_flight: IntGaugeVec,
    model_events: IntCounterVec,
    open_connections: IntGaugeVec,
    connections_refused: IntCounterVec,
    capture_records: IntCounterVec,
    capture_dropped: IntCounterVec,
    capture_sink_errors: IntCounterVec,
    capture_queue: IntGaugeVec,
}

/// One capture sink's series.
#[derive(Clone)]
pub struct CaptureSinkMetrics {
    pub records: prometheus::IntCounter,
    pub queue: prometheus::IntGauge,
    pub queue_full: prometheus::IntCounter,
    pub sink_error: prometheus::IntCounter,
    pub errors: prometheus::IntCounter,
}

impl CaptureSinkMetrics {
    /// Counts a failed write or delivery attempt; returns the sink's total so far.
    pub fn error(&self) -> u64 {
        self.errors.inc();
        self.errors.get()
    }
}

/// Decrements the in-flight gauge when the request is answered (or abandoned).
pub struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Model load times: 10 ms to 10 min.
const LOAD_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Why the queue refused or dropped a request (`switchyard_queue_rejections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request's priority level was full at admission.
    QueueFull,
    /// The request's (or model's) timeout passed.
    Timeout,
    /// The caller went away while it waited.
    Cancelled,
    /// The server's bound on any request (`--max-request-time`) passed.
    MaxRequestTime,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::QueueFull,
        Rejection::Timeout,
        Rejection::Cancelled,
        Rejection::MaxRequestTime,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::Timeout => "timeout",
            Rejection::Cancelled => "cancelled",
            Rejection::MaxRequestTime => "max_request_time",
        }
    }
}

/// `switchyard_model_events_total{event}` values.
pub const MODEL_EVENTS: [&str; 3] = ["swapped_in", "retired", "unloaded"];

/// `switchyard_canary_decisions_total{decision}` values.
/// `pause`, `resume` and `abort` are an operator's (the control API); `promote` either.
pub const CANARY_DECISIONS: [&str; 9] = [
    "wait",
    "hold",
    "shadow_passed",
    "step_up",
    "promote",
    "rollback",
    "pause",
    "resume",
    "abort",
];

/// `switchyard_rollout_phase{phase}` values (`control::canary::PHASES`).
pub const ROLLOUT_PHASES: [&str; 5] = ["shadow", "canary", "paused", "promoted", "rolled_back"];

/// |stable − shadow| buckets (fleet mode bounds the largest by them).
pub const ABS_DIFFERENCE_BUCKETS: [f64; 11] = [
    1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0,
];

/// How long rollouts last: seconds to hours.
const ROLLOUT_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

/// The protocols requests are counted under.
pub const PROTOCOLS: [&str; 2] = ["http", "grpc"];

/// A count and a total duration (Triton's `StatisticDuration`).
#[derive(Debug, Default)]
pub struct StatDuration {
    count: AtomicU64,
    ns: AtomicU64,
}

impl StatDuration {
    fn add(&self, count: u64, took: Duration) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// (count, nanoseconds).
    pub fn read(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// One model version's statistics in Triton's shape (the statistics
/// extension): plain atomics, so recording takes no lock.
#[derive(Debug)]
pub struct VersionStats {
    /// Milliseconds since the Unix epoch of the last answered request (0: none).
    pub last_inference_ms: AtomicU64,
    /// Successful inferences, each row counted (Triton's rule).
    pub inference_count: AtomicU64,
    /// Runtime executions (batches).
    pub execution_count: AtomicU64,
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    /// Per request, the runtime call of the batch it was in (it joins the
    /// inputs and copies the outputs, so compute input/output are inside it).
    pub compute_infer: StatDuration,
    /// Executions by batch size (index = rows, 1..=max batch size).
    pub batches: Vec<StatDuration>,
}

/// One pipeline step's timing series (success resolved once; other outcomes on demand).
#[derive(Clone)]
pub struct PipelineStepMetrics {
    success: prometheus::Histogram,
    histogram: HistogramVec,
    pipeline: String,
    step: String,
}

impl PipelineStepMetrics {
    /// `outcome`: `success`, `skipped`, or the failure's error-kind label.
    pub fn observe(&self, outcome: &str, took: Duration) {
        if outcome == "success" {
            self.success.observe(took.as_secs_f64());
        } else {
            self.histogram
                .with_label_values(&[self.pipeline.as_str(), self.step.as_str(), outcome])
                .observe(took.as_secs_f64());
        }
    }
}

impl VersionStats {
    pub fn new(max_batch_size: usize) -> Self {
        VersionStats {
            last_inference_ms: AtomicU64::new(0),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            success: StatDuration::default(),
            fail: StatDuration::default(),
            queue: StatDuration::default(),
            compute_infer: StatDuration::default(),
            batches: (0..=max_batch_size.max(1))
                .map(|_| StatDuration::default())
                .collect(),
        }
    }

    /// A request's answer: its rows, whether it succeeded, its time in the server.
    pub fn answered(&self, rows: usize, ok: bool, took: Duration) {
        if ok {
            self.success.add(1, took);
            self.inference_count
                .fetch_add(rows as u64, Ordering::Relaxed);
        } else {
            self.fail.add(1, took);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// One runtime execution of `rows` rows for `requests` requests.
    pub fn executed(&self, rows: usize, requests: usize, took: Duration) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.compute_infer.add(requests as u64, took);
        let slot = rows.clamp(1, self.batches.len() - 1);
        self.batches[slot].add(1, took);
    }
}

/// One model version's series, resolved once so the hot path does no label lookups.
#[derive(Clone)]
pub struct ModelMetrics {
    queue_depth: prometheus::IntGauge,
    in_flight: prometheus::IntGauge,
    queue_time: prometheus::Histogram,
    compute_time: prometheus::Histogram,
    batch_size: prometheus::Histogram,
    /// Indexed like `Rejection::ALL`.
    rejections: [prometheus::IntCounter; 4],
    /// Triton-shaped statistics of this version (the statistics extension).
    pub stats: std::sync::Arc<VersionStats>,
}

impl ModelMetrics {
    /// Counts a request as in flight until the returned guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn queue_depth_add(&self, delta: i64) {
        self.queue_depth.add(delta);
    }

    pub fn observe_queue_time(&self, waited: Duration) {
        self.queue_time.observe(waited.as_secs_f64());
        self.stats.queue.add(1, waited);
    }

    pub fn observe_compute(&self, took: Duration) {
        self.compute_time.observe(took.as_secs_f64());
    }

    pub fn observe_batch(&self, rows: usize) {
        self.batch_size.observe(rows as f64);
    }

    /// A request refused or dropped by the queue.
    pub fn rejected(&self, reason: Rejection) {
        self.rejections[reason as usize].inc();
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Inference requests by outcome.",
            ),
            &["model", "version", "protocol", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from a decoded inference request to its response, in seconds.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version", "protocol"],
        )?;
        let model_ready = IntGaugeVec::new(
            Opts::new(
                "switchyard_model_ready",
                "1 when the model version is loaded and serving.",
            ),
            &["model", "version"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "switchyard_queue_depth",
                "Requests waiting in the model version's queue.",
            ),
            &["model", "version"],
        )?;
        let queue_time = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_queue_duration_seconds",
                "Time requests waited before their batch was formed.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version"],
        )?;
        let compute_time = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_compute_duration_seconds",
                "Runtime time per batch.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "version"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_batch_size",
                "Rows per batch sent to the runtime.",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
            &["model", "version"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "switchyard_queue_rejections_total",
                "Requests refused or dropped by the queue, by reason (queue_full, timeout, cancelled, max_request_time).",
            ),
            &["model", "version", "reason"],
        )?;
        let model_loads = IntCounterVec::new(
            Opts::new(
                "switchyard_model_loads_total",
                "Model version loads (fetch, load, warm-up) by outcome.",
            ),
            &["model", "outcome"],
        )?;
        let model_load_time = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_model_load_duration_seconds",
                "Time to fetch, load and warm up a model version.",
            )
            .buckets(LOAD_BUCKETS.to_vec()),
            &["model"],
        )?;
        let source_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_source_errors_total",
                "Failed polls of a model source (registry, bucket, folder).",
            ),
            &["source"],
        )?;
        let source_up = IntGaugeVec::new(
            Opts::new(
                "switchyard_source_up",
                "1 when the last poll of the model source succeeded.",
            ),
            &["source"],
        )?;
        let endpoint_requests = IntCounterVec::new(
            Opts::new(
                "switchyard_endpoint_requests_total",
                "Routed requests by endpoint, variant (or `shadow`) and outcome.",
            ),
            &["endpoint", "variant", "outcome"],
        )?;
        let endpoint_latency = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_endpoint_request_duration_seconds",
                "Latency of successful routed requests.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint", "variant"],
        )?;
        let pipeline_steps = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_pipeline_step_duration_seconds",
                "Time of each pipeline step (queue and model), by pipeline, step and outcome (`skipped`: its condition did not hold).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["pipeline", "step", "outcome"],
        )?;
        let shadow_dropped = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_dropped_total",
                "Shadow copies dropped because the shadow queue was full.",
            ),
            &["endpoint"],
        )?;
        let shadow_comparisons = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_comparisons_total",
                "Shadow answers compared with the stable answer to the same request, per output: agree (floats within the endpoint's tolerance, others equal), disagree, mismatch (datatype, shape or missing).",
            ),
            &["endpoint", "output", "result"],
        )?;
        let shadow_abs_diff = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_shadow_max_abs_difference",
                "Largest |stable − shadow| of a floating-point output, per compared request.",
            )
            .buckets(ABS_DIFFERENCE_BUCKETS.to_vec()),
            &["endpoint", "output"],
        )?;
        let shadow_argmax_rows = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_argmax_rows_total",
                "Rows of a compared output (classes along the last dimension) whose argmax is the same or different in the shadow.",
            ),
            &["endpoint", "output", "result"],
        )?;
        let shadow_mean_abs_diff = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_shadow_mean_abs_difference",
                "Mean |stable − shadow| of a floating-point output, per compared request (its _sum ÷ _count is the mean fleet mode judges).",
            )
            .buckets(ABS_DIFFERENCE_BUCKETS.to_vec()),
            &["endpoint", "output"],
        )?;
        let shadow_requests_compared = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_requests_compared_total",
                "Shadow answers compared with the stable answer, per request: agree (every output agreed) or disagree.",
            ),
            &["endpoint", "result"],
        )?;
        let rollout_position = IntGaugeVec::new(
            Opts::new(
                "switchyard_rollout_position",
                "Where this replica's rollout of a candidate stands: 0 waiting for the fleet, 1 shadow, 2 + i canary step i (fleet mode reads it from every replica).",
            ),
            &["rollout", "candidate"],
        )?;
        let rollout_failed_checks = IntGaugeVec::new(
            Opts::new(
                "switchyard_rollout_failed_checks",
                "Failed checks in a row of this replica's rollout of a candidate.",
            ),
            &["rollout", "candidate"],
        )?;
        let rollout_outcome = IntGaugeVec::new(
            Opts::new(
                "switchyard_rollout_outcome",
                "1 once a rollout of a candidate ended here (promoted or rolled_back); kept until the next rollout, so replicas that missed the decision adopt it.",
            ),
            &["rollout", "candidate", "outcome"],
        )?;
        let fleet_reads = IntCounterVec::new(
            Opts::new(
                "switchyard_fleet_reads_total",
                "Fleet mode's reads of a boundary from Prometheus: judged, incomplete (a replica down or not reporting: held) or error (Prometheus unreachable: held).",
            ),
            &["rollout", "result"],
        )?;
        let canary_decisions = IntCounterVec::new(
            Opts::new(
                "switchyard_canary_decisions_total",
                "Canary checks by decision (wait, hold, step_up, promote, rollback).",
            ),
            &["endpoint", "decision"],
        )?;
        let rollout_phase = IntGaugeVec::new(
            Opts::new(
                "switchyard_rollout_phase",
                "1 for each rollout's current phase (shadow, canary, paused, promoted, rolled_back), else 0.",
            ),
            &["rollout", "phase"],
        )?;
        let rollout_time = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_rollout_duration_seconds",
                "Time from a rollout's start (a model version loaded and warm, or a route file's canary) to its promotion or rollback.",
            )
            .buckets(ROLLOUT_BUCKETS.to_vec()),
            &["rollout", "outcome"],
        )?;
        let canary_weight = prometheus::GaugeVec::new(
            Opts::new(
                "switchyard_route_weight",
                "Current traffic weight of each endpoint variant.",
            ),
            &["endpoint", "variant"],
        )?;
        let routes_errors = prometheus::IntCounter::new(
            "switchyard_route_file_errors_total",
            "Route file contents refused (the previous routes kept serving).",
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "switchyard_in_flight_requests",
                "Requests admitted to a model version and not yet answered.",
            ),
            &["model", "version"],
        )?;
        let model_events = IntCounterVec::new(
            Opts::new(
                "switchyard_model_events_total",
                "Model version life-cycle events: swapped_in, retired, unloaded.",
            ),
            &["model", "event"],
        )?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_open_connections",
                "Connections open on each listener (http, grpc).",
            ),
            &["listener"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "switchyard_connections_refused_total",
                "Connections closed unserved: max_connections (the listener's cap) or tls_handshakes (too many handshakes at once).",
            ),
            &["listener", "reason"],
        )?;
        let capture_records = IntCounterVec::new(
            Opts::new(
                "switchyard_capture_records_total",
                "Inference records written by each capture sink (file, cloudevents).",
            ),
            &["sink"],
        )?;
        let capture_dropped = IntCounterVec::new(
            Opts::new(
                "switchyard_capture_dropped_total",
                "Capture records dropped: queue_full (the sink is behind) or sink_error (a write or delivery failed for good).",
            ),
            &["sink", "reason"],
        )?;
        let capture_sink_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_capture_sink_errors_total",
                "Failed capture writes and delivery attempts (retries included).",
            ),
            &["sink"],
        )?;
        let capture_queue = IntGaugeVec::new(
            Opts::new(
                "switchyard_capture_queue_depth",
                "Capture records waiting for their sink.",
            ),
            &["sink"],
        )?;
        registry.register(Box::new(capture_records.clone()))?;
        registry.register(Box::new(capture_dropped.clone()))?;
        registry.register(Box::new(capture_sink_errors.clone()))?;
        registry.register(Box::new(capture_queue.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(model_events.clone()))?;
        registry.register(Box::new(endpoint_requests.clone()))?;
        registry.register(Box::new(endpoint_latency.clone()))?;
        registry.register(Box::new(pipeline_steps.clone()))?;
        registry.register(Box::new(shadow_dropped.clone()))?;
        registry.register(Box::new(shadow_comparisons.clone()))?;
        registry.register(Box::new(shadow_abs_diff.clone()))?;
        registry.register(Box::new(shadow_argmax_rows.clone()))?;
        registry.register(Box::new(shadow_mean_abs_diff.clone()))?;
        registry.register(Box::new(shadow_requests_compared.clone()))?;
        registry.register(Box::new(rollout_position.clone()))?;
        registry.register(Box::new(rollout_failed_checks.clone()))?;
        registry.register(Box::new(rollout_outcome.clone()))?;
        registry.register(Box::new(fleet_reads.clone()))?;
        registry.register(Box::new(canary_decisions.clone()))?;
        registry.register(Box::new(canary_weight.clone()))?;
        registry.register(Box::new(rollout_phase.clone()))?;
        registry.register(Box::new(rollout_time.clone()))?;
        registry.register(Box::new(routes_errors.clone()))?;
        registry.register(Box::new(model_loads.clone()))?;
        registry.register(Box::new(model_load_time.clone()))?;
        registry.register(Box::new(source_errors.clone()))?;
        registry.register(Box::new(source_up.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(model_ready.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_time.clone()))?;
        registry.register(Box::new(compute_time.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            model_ready,
            queue_depth,
            queue_time,
            compute_time,
            batch_size,
            rejections,
            model_loads,
            model_load_time,
            source_errors,
            source_up,
            endpoint_requests,
            endpoint_latency,
            pipeline_steps,
            shadow_dropped,
            shadow_comparisons,
            shadow_abs_diff,
            shadow_argmax_rows,
            shadow_mean_abs_diff,
            shadow_requests_compared,
            rollout_position,
            rollout_failed_checks,
            rollout_outcome,
            fleet_reads,
            canary_decisions,
            canary_weight,
            rollout_phase,
            rollout_time,
            routes_errors,
            in_flight,
            model_events,
            open_connections,
            connections_refused,
            capture_records,
            capture_dropped,
            capture_sink_errors,
            capture_queue,
        })
    }

    /// An endpoint's series, at zero, when its routes load: outcomes and
    /// latency per variant (and `shadow`), shadow drops, canary decisions.
    pub fn expose_endpoint(&self, endpoint: &str, variants: &[&str], shadow: bool, canary: bool) {
        let shadow_variant = shadow.then_some("shadow");
        for variant in variants.iter().copied().chain(shadow_variant) {
            for outcome in ["success", "failure"] {
                let _ = self
                    .endpoint_requests
                    .with_label_values(&[endpoint, variant, outcome]);
            }
            let _ = self
                .endpoint_latency
                .with_label_values(&[endpoint, variant]);
        }
        if shadow {
            let _ = self.shadow_dropped.with_label_values(&[endpoint]);
        }
        if canary {
            for decision in CANARY_DECISIONS {
                let _ = self
                    .canary_decisions
                    .with_label_values(&[endpoint, decision]);
            }
            self.expose_rollout(endpoint);
        }
    }

    /// A rollout's series at zero (a model's from its first load, so that a
    /// dashboard has them before any version arrives).
    pub fn expose_rollout(&self, rollout: &str) {
        for phase in ROLLOUT_PHASES {
            let _ = self.rollout_phase.with_label_values(&[rollout, phase]);
        }
        for outcome in ["promoted", "rolled_back"] {
            let _ = self.rollout_time.with_label_values(&[rollout, outcome]);
        }
        for result in ["judged", "incomplete", "error"] {
            let _ = self.fleet_reads.with_label_values(&[rollout, result]);
        }
    }

    /// Marks `phase` as the rollout's current one.
    pub fn set_rollout_phase(&self, rollout: &str, phase: &str) {
        for each in ROLLOUT_PHASES {
            self.rollout_phase
                .with_label_values(&[rollout, each])
                .set(i64::from(each == phase));
        }
    }

    pub fn observe_rollout(&self, rollout: &str, outcome: &str, took: Duration) {
        self.rollout_time
            .with_label_values(&[rollout, outcome])
            .observe(took.as_secs_f64());
    }

    /// A pipeline step's series: its successes exposed at zero when the pipeline loads.
    pub fn pipeline_step(&self, pipeline: &str, step: &str) -> PipelineStepMetrics {
        PipelineStepMetrics {
            success: self
                .pipeline_steps
                .with_label_values(&[pipeline, step, "success"]),
            histogram: self.pipeline_steps.clone(),
            pipeline: pipeline.to_owned(),
            step: step.to_owned(),
        }
    }

    /// A capture sink's series, at zero, resolved once (records are counted per record).
    pub fn capture_sink(&self, sink: &str) -> CaptureSinkMetrics {
        CaptureSinkMetrics {
            records: self.capture_records.with_label_values(&[sink]),
            queue: self.capture_queue.with_label_values(&[sink]),
            queue_full: self
                .capture_dropped
                .with_label_values(&[sink, "queue_full"]),
            sink_error: self
                .capture_dropped
                .with_label_values(&[sink, "sink_error"]),
            errors: self.capture_sink_errors.with_label_values(&[sink]),
        }
    }

    /// A listener's connection series, at zero.
    pub fn expose_listener(&self, listener: &str) {
        let _ = self.open_connections.with_label_values(&[listener]);
        for reason in ["max_connections", "tls_handshakes"] {
            let _ = self
                .connections_refused
                .with_label_values(&[listener, reason]);
        }
    }

    pub fn connection_opened(&self, listener: &str) {
        self.open_connections.with_label_values(&[listener]).inc();
    }

    pub fn connection_closed(&self, listener: &str) {
        self.open_connections.with_label_values(&[listener]).dec();
    }

    /// Counts a refused connection; returns how many this listener refused so far.
    pub fn connection_refused(&self, listener: &str, reason: &str) -> u64 {
        let counter = self
            .connections_refused
            .with_label_values(&[listener, reason]);
        counter.inc();
        counter.get()
    }

    /// A model version event: `swapped_in`, `retired` or `unloaded`.
    pub fn model_event(&self, model: &str, event: &str) {
        self.model_events.with_label_values(&[model, event]).inc();
    }

    pub fn observe_endpoint(&self, endpoint: &str, variant: &str, outcome: &str, took: Duration) {
        self.endpoint_requests
            .with_label_values(&[endpoint, variant, outcome])
            .inc();
        if outcome == "success" {
            self.endpoint_latency
                .with_label_values(&[endpoint, variant])
                .observe(took.as_secs_f64());
        }
    }

    pub fn shadow_dropped(&self, endpoint: &str) {
        self.shadow_dropped.with_label_values(&[endpoint]).inc();
    }

    /// A shadow's outputs' agreement series, at zero, when its route loads.
    pub fn expose_shadow_outputs(&self, endpoint: &str, outputs: &[&str]) {
        for result in ["agree", "disagree"] {
            let _ = self
                .shadow_requests_compared
                .with_label_values(&[endpoint, result]);
        }
        for output in outputs {
            for result in ["agree", "disagree", "mismatch"] {
                let _ = self
                    .shadow_comparisons
                    .with_label_values(&[endpoint, output, result]);
            }
            let _ = self.shadow_abs_diff.with_label_values(&[endpoint, output]);
            let _ = self
                .shadow_mean_abs_diff
                .with_label_values(&[endpoint, output]);
            for result in ["same", "different"] {
                let _ = self
                    .shadow_argmax_rows
                    .with_label_values(&[endpoint, output, result]);
            }
        }
    }

    /// One shadow output compared with the stable one: its verdict label, its
    /// largest absolute difference (floats), and (same, rows) of its argmax.
    pub fn shadow_compared(
        &self,
        endpoint: &str,
        output: &str,
        verdict: &str,
        max_abs_diff: Option<f64>,
        mean_abs_diff: Option<f64>,
        argmax: Option<(u64, u64)>,
    ) {
        self.shadow_comparisons
            .with_label_values(&[endpoint, output, verdict])
            .inc();
        if let Some(diff) = max_abs_diff {
            self.shadow_abs_diff
                .with_label_values(&[endpoint, output])
                .observe(diff);
        }
        if let Some(mean) = mean_abs_diff {
            self.shadow_mean_abs_diff
                .with_label_values(&[endpoint, output])
                .observe(mean);
        }
        if let Some((same, rows)) = argmax {
            self.shadow_argmax_rows
                .with_label_values(&[endpoint, output, "same"])
                .inc_by(same);
            self.shadow_argmax_rows
                .with_label_values(&[endpoint, output, "different"])
                .inc_by(rows - same);
        }
    }

    /// One shadow answer compared, all outputs together.
    pub fn shadow_request_compared(&self, endpoint: &str, agreed: bool) {
        self.shadow_requests_compared
            .with_label_values(&[endpoint, if agreed { "agree" } else { "disagree" }])
            .inc();
    }

    /// This replica's place in a rollout of `candidate` (fleet mode reads it).
    pub fn set_rollout_position(&self, rollout: &str, candidate: &str, position: u32, failed: u32) {
        self.rollout_position
            .with_label_values(&[rollout, candidate])
            .set(i64::from(position));
        self.rollout_failed_checks
            .with_label_values(&[rollout, candidate])
            .set(i64::from(failed));
    }

    /// A rollout's end here: its position series go, its outcome stays
    /// (until the rollout's next start clears it).
    pub fn set_rollout_outcome(&self, rollout: &str, candidate: &str, outcome: &str) {
        self.clear_rollout(rollout);
        self.rollout_outcome
            .with_label_values(&[rollout, candidate, outcome])
            .set(1);
    }

    /// Removes every position and outcome series of `rollout`.
    pub fn clear_rollout(&self, rollout: &str) {
        for vec in [
            &self.rollout_position,
            &self.rollout_failed_checks,
            &self.rollout_outcome,
        ] {
            for family in prometheus::core::Collector::collect(vec) {
                for metric in family.get_metric() {
                    let labels: std::collections::HashMap<&str, &str> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    if labels.get("rollout") == Some(&rollout) {
                        let _ = vec.remove(&labels);
                    }
                }
            }
        }
    }

    /// A fleet read's result: `judged`, `incomplete` or `error`.
    pub fn fleet_read(&self, rollout: &str, result: &str) {
        self.fleet_reads.with_label_values(&[rollout, result]).inc();
    }

    pub fn canary_decision(&self, endpoint: &str, decision: &str) {
        self.canary_decisions
            .with_label_values(&[endpoint, decision])
            .inc();
    }

    pub fn set_route_weight(&self, endpoint: &str, variant: &str, weight: f64) {
        self.canary_weight
            .with_label_values(&[endpoint, variant])
            .set(weight);
    }

    pub fn route_file_error(&self) {
        self.routes_errors.inc();
    }

    pub fn observe_model_load(&self, model: &str, outcome: &str, took: Duration) {
        self.model_loads.with_label_values(&[model, outcome]).inc();
        self.model_load_time
            .with_label_values(&[model])
            .observe(took.as_secs_f64());
    }

    pub fn source_error(&self, source: &str) {
        self.source_errors.with_label_values(&[source]).inc();
        self.source_up.with_label_values(&[source]).set(0);
    }

    pub fn set_source_up(&self, source: &str, up: bool) {
        let _ = self.source_errors.with_label_values(&[source]);
        self.source_up
            .with_label_values(&[source])
            .set(i64::from(up));
    }

    /// The series of one model version. Every series whose labels are known
    /// now (each outcome, protocol and rejection reason) is created at zero,
    /// so `rate()` and alerts see it before its first event.
    pub fn for_model(&self, model: &str, version: u64, max_batch_size: usize) -> ModelMetrics {
        let version = version.to_string();
        let labels = [model, version.as_str()];
        for protocol in PROTOCOLS {
            let _ = self.latency.with_label_values(&[model, &version, protocol]);
            for outcome in
                std::iter::once("success").chain(ErrorKind::ALL.iter().map(|k| k.as_label()))
            {
                let _ = self
                    .requests
                    .with_label_values(&[model, &version, protocol, outcome]);
            }
        }
        for outcome in ["success", "failure"] {
            let _ = self.model_loads.with_label_values(&[model, outcome]);
        }
        let _ = self.model_load_time.with_label_values(&[model]);
        for event in MODEL_EVENTS {
            let _ = self.model_events.with_label_values(&[model, event]);
        }
        ModelMetrics {
            queue_depth: self.queue_depth.with_label_values(&labels),
            in_flight: self.in_flight.with_label_values(&labels),
            queue_time: self.queue_time.with_label_values(&labels),
            compute_time: self.compute_time.with_label_values(&labels),
            batch_size: self.batch_size.with_label_values(&labels),
            rejections: Rejection::ALL.map(|reason| {
                self.rejections
                    .with_label_values(&[model, &version, reason.as_label()])
            }),
            stats: std::sync::Arc::new(VersionStats::new(max_batch_size)),
        }
    }

    /// Drops a model version's queue series once it is unloaded.
    pub fn forget_model(&self, model: &str, version: u64) {
        let version = version.to_string();
        let labels = [model, version.as_str()];
        let _ = self.queue_depth.remove_label_values(&labels);
        let _ = self.queue_time.remove_label_values(&labels);
        let _ = self.compute_time.remove_label_values(&labels);
        let _ = self.batch_size.remove_label_values(&labels);
    }

    /// Records one finished inference request. `model`/`version` are empty when
    /// the request named no known model.
    pub fn observe_request(
        &self,
        model: &str,
        version: &str,
        protocol: &str,
        outcome: &str,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[model, version, protocol, outcome])
            .inc();
        if outcome == "success" {
            self.latency
                .with_label_values(&[model, version, protocol])
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn set_model_ready(&self, model: &str, version: &str, ready: bool) {
        if ready {
            self.model_ready.with_label_values(&[model, version]).set(1);
        } else {
            // Dropping the series keeps unloaded versions from lingering.
            let _ = self.model_ready.remove_label_values(&[model, version]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
