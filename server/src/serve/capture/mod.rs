//! Inference data capture: sampled request/response records per model,
//! endpoint and variant, that never slow or break serving. The request path
//! only decides whether to record (the policy's sampling), clones what it
//! keeps (tensor buffers are shared, not copied) and offers the record to each
//! sink's bounded queue with `try_send`; a full queue drops the record and
//! counts it. Each sink is a background task: `file` writes JSON Lines with
//! rotation and retention, `cloudevents` posts KServe-logger CloudEvents with
//! retries. `record` owns the formats.

mod cloudevents;
mod file;
pub mod record;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::capture::CapturePolicy;
use crate::metrics::{CaptureSinkMetrics, Metrics};
pub use record::{CapturedTensor, Record};

/// Where records go, from flags. No sink: capture policies have no effect.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// JSON Lines files in this folder.
    pub dir: Option<PathBuf>,
    pub max_file_bytes: u64,
    pub rotate_interval: Duration,
    /// Rotated files kept (the oldest go first).
    pub keep_files: usize,
    /// CloudEvents receiver (KServe's logger format).
    pub url: Option<String>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// `ce-source` of the events.
    pub source: String,
    /// Records waiting per sink before new ones are dropped.
    pub queue: usize,
    /// How long a failing delivery is retried before the record is dropped.
    pub retry_for: Duration,
    /// Deliveries in flight at once (CloudEvents).
    pub concurrency: usize,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            dir: None,
            max_file_bytes: 100 << 20,
            rotate_interval: Duration::from_secs(3600),
            keep_files: 24,
            url: None,
            token: None,
            ca_file: None,
            source: "switchyard".to_owned(),
            queue: 10_000,
            retry_for: Duration::from_secs(30),
            concurrency: 16,
        }
    }
}

struct Sink {
    name: &'static str,
    queue: mpsc::Sender<Arc<Record>>,
    metrics: CaptureSinkMetrics,
}

/// The capture handle the request path offers records to.
pub struct Capture {
    sinks: Vec<Sink>,
    dropped: AtomicU64,
    stop: CancellationToken,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Capture {
    /// Starts the configured sinks (inside the tokio runtime); `None` without any.
    pub fn start(
        settings: &CaptureSettings,
        metrics: Metrics,
    ) -> Result<Option<Arc<Self>>, String> {
        let stop = CancellationToken::new();
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        if let Some(dir) = &settings.dir {
            let (queue, records) = mpsc::channel(settings.queue.max(1));
            let sink_metrics = metrics.capture_sink("file");
            let writer = file::FileSink::new(dir, settings, sink_metrics.clone())?;
            // Its own thread: serialising and writing block it, never a reactor
            // thread, and no task hops between batches.
            let runtime = tokio::runtime::Handle::current();
            let stopping = stop.clone();
            let thread = std::thread::Builder::new()
                .name("sy-capture-file".to_owned())
                .spawn(move || runtime.block_on(writer.run(records, stopping)))
                .map_err(|err| format!("starting the capture writer: {err}"))?;
            tasks.push(tokio::task::spawn_blocking(move || {
                let _ = thread.join();
            }));
            sinks.push(Sink {
                name: "file",
                queue,
                metrics: sink_metrics,
            });
        }
        if let Some(url) = &settings.url {
            let (queue, records) = mpsc::channel(settings.queue.max(1));
            let sink_metrics = metrics.capture_sink("cloudevents");
            let poster = cloudevents::CloudEventsSink::new(url, settings, sink_metrics.clone())?;
            tasks.push(tokio::spawn(poster.run(records, stop.clone())));
            sinks.push(Sink {
                name: "cloudevents",
                queue,
                metrics: sink_metrics,
            });
        }
        if sinks.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Capture {
            sinks,
            dropped: AtomicU64::new(0),
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })))
    }

    /// Offers a record to every sink; never waits.
    pub fn offer(&self, record: Record) {
        let record = Arc::new(record);
        for sink in &self.sinks {
            match sink.queue.try_send(record.clone()) {
                Ok(()) => sink.metrics.queue.inc(),
                Err(_) => {
                    sink.metrics.queue_full.inc();
                    let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // Said at a bounded rate: the 1st, 2nd, 4th, 8th… drop.
                    if dropped.is_power_of_two() {
                        warn!(
                            sink = sink.name,
                            dropped, "Capture queue full; records dropped (serving is unaffected)."
                        );
                    }
                }
            }
        }
    }

    /// Lets the sinks write what is queued, for at most `within`.
    pub async fn shutdown(&self, within: Duration) {
        self.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut tasks| tasks.drain(..).collect())
            .unwrap_or_default();
        let _ = tokio::time::timeout(within, futures::future::join_all(tasks)).await;
    }
}

/// What a sampled request keeps until its answer, to become a record.
pub struct Pending {
    pub policy: Arc<CapturePolicy>,
    pub id: String,
    pub time: std::time::SystemTime,
    pub endpoint: Option<String>,
    pub variant: Option<String>,
    pub protocol: &'static str,
    pub parameters: Vec<(String, switchyard_runtimes::Parameter)>,
    pub inputs: Option<Vec<CapturedTensor>>,
}

/// The policy's view of some tensors: only those it keeps, data withheld where redacted.
pub fn keep_tensors(
    tensors: &[switchyard_runtimes::Tensor],
    keeps: impl Fn(&str) -> bool,
    redacts: impl Fn(&str) -> bool,
) -> Vec<CapturedTensor> {
    tensors
        .iter()
        .filter(|t| keeps(t.name()))
        .map(|t| CapturedTensor {
            tensor: t.clone(),
            redacted: redacts(t.name()),
        })
        .collect()
}

impl Pending {
    /// Starts a record for a sampled request (clones share the tensor buffers).
    pub fn start(
        policy: Arc<CapturePolicy>,
        id: String,
        request: &crate::serve::infer::InferRequest,
        routed: Option<(&str, &str)>,
    ) -> Self {
        let inputs = policy.keep_request.then(|| {
            keep_tensors(
                &request.inputs,
                |n| policy.keeps_input(n),
                |n| policy.redacts(n),
            )
        });
        Pending {
            id,
            time: std::time::SystemTime::now(),
            endpoint: routed.map(|(endpoint, _)| endpoint.to_owned()),
            variant: routed.map(|(_, variant)| variant.to_owned()),
            protocol: request.protocol,
            parameters: request.parameters.clone(),
            inputs,
            policy,
        }
    }

    /// The record of the finished request.
    pub fn finish(
        self,
        model: &crate::serve::model::ModelVersion,
        latency: Duration,
        result: Result<&[switchyard_runtimes::Tensor], &crate::error::ApiError>,
    ) -> Record {
        let policy = &self.policy;
        let (outcome, http_status, grpc_code, error, outputs) = match result {
            Ok(outputs) => (
                "success",
                200,
                "OK",
                None,
                policy
                    .keep_response
                    .then(|| keep_tensors(outputs, |n| policy.keeps_output(n), |_| false)),
            ),
            Err(err) => (
                err.kind.as_label(),
                err.kind.http_status().as_u16(),
                err.kind.grpc_code_name(),
                Some(err.message.clone()),
                policy.keep_response.then(Vec::new),
            ),
        };
        let size: usize = self
            .inputs
            .iter()
            .chain(outputs.iter())
            .flatten()
            .filter(|t| !t.redacted)
            .map(|t| t.tensor.data().len())
            .sum();
        Record {
            id: self.id,
            time: self.time,
            endpoint: self.endpoint,
            variant: self.variant,
            model: model.name.clone(),
            version: model.version.to_string(),
            protocol: self.protocol,
            latency,
            outcome,
            http_status,
            grpc_code,
            error,
            parameters: self.parameters,
            inputs: self.inputs,
            outputs,
            // base64 grows data by 4/3; the cap is on what is written.
            truncated: size.saturating_mul(4) / 3 > policy.max_record_bytes,
        }
    }
}

/// A random request id in UUID form, for requests that bring none.
pub fn new_id() -> String {
    let v: u128 = rand::random();
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Takes what is queued now (at most `max`), waiting for the first unless stopping.
async fn next_batch(
    records: &mut mpsc::Receiver<Arc<Record>>,
    stop: &CancellationToken,
    max: usize,
) -> Option<Vec<Arc<Record>>> {
    let first = tokio::select! {
        record = records.recv() => record?,
        _ = stop.cancelled() => records.try_recv().ok()?,
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match records.try_recv() {
            Ok(record) => batch.push(record),
            Err(_) => break,
        }
    }
    Some(batch)
}
