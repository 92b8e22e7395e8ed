//! The request queue and dynamic batcher of one model version.
//!
//! One queue per version, under one short lock, shared by everyone who moves
//! work through it (`queue`). Admission never waits: a request whose
//! priority level is full is refused at once. Nothing is handed ahead to a
//! busy instance: requests stay in the queue (where they can still merge,
//! expire or be cancelled) until an instance is free for them.
//!
//! A batch goes to a free instance when one of these holds:
//! * the rows waiting reach `max_batch_size` or a preferred batch size;
//! * the oldest request has waited `max_queue_delay` (or, when adaptive, the
//!   delay the adaptive rule picks, see `Adaptive`);
//! * `dispatch_when_idle` is on: at low load a request never waits for
//!   company it will not get, and under load requests gather while every
//!   instance is busy ("natural" batching);
//! * there is no batching (one request per batch);
//! * the model is shutting down (drain what is queued).
//!
//! Who sends it, so that a batch costs at most one wake-up: the request that
//! makes it due, when an instance waits idle (that instance is the only
//! thread woken); the worker that finishes a batch, for itself, without a
//! hand-off (a busy instance runs back to back, its I/O threads are not
//! needed in between); the timer task, when a delay passes while an instance
//! is idle.
//!
//! Requests merge only when every input has the same non-batch dimensions,
//! except along dims the config pads. A request is never split.
//! Deadlines are driven by a timer: a queued request whose deadline passes is
//! answered then, not when a slot frees. Callers that go away (client
//! disconnect, cancelled gRPC call) are dropped from the queue unrun.
//!
//! The folder follows the seams: `batch` (a formed batch, its row blocks and
//! how outputs split back), `queue` (the shared queue, how batches form, the
//! timer task), `padding` (resizing along padded dims), `adaptive` (the delay
//! rule). This file holds the request side: settings, admission, deadlines.

mod adaptive;
mod batch;
mod padding;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use switchyard_runtimes::{RequestContext, Signature, Tensor};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::model::{BatchingConfig, ModelConfig, QueuePolicy, TimeoutAction};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{ModelMetrics, Rejection};
pub use batch::{Batch, ComputeTable};
use queue::Shared;

pub type Reply = Result<Vec<Tensor>, ApiError>;

/// A queued request.
struct Pending {
    inputs: Vec<Tensor>,
    rows: usize,
    /// Requests with equal keys merge.
    key: MergeKey,
    level: usize,
    enqueued: Instant,
    /// The request's timeout or the server's bound (`max_request_time`), whichever is sooner.
    deadline: Instant,
    /// The deadline is the server's bound, not a timeout the request or model set.
    bounded_by_server: bool,
    reply: oneshot::Sender<Reply>,
    /// The request's span, and the span of its wait in the queue (closed when its batch forms).
    span: tracing::Span,
    _queued: tracing::Span,
}

/// What decides whether two requests may share a batch: the non-batch dims
/// of every input (padded dims blanked) and, for runtimes that forward
/// requests, the request's context (parameters, outputs). A request of a
/// sequence never merges: each of its steps is one upstream call.
#[derive(Debug, Clone)]
struct MergeKey {
    dims: Vec<Vec<i64>>,
    context: Option<Arc<RequestContext>>,
}

impl PartialEq for MergeKey {
    fn eq(&self, other: &Self) -> bool {
        let in_sequence =
            |key: &MergeKey| key.context.as_ref().is_some_and(|c| c.sequence.is_some());
        !in_sequence(self)
            && !in_sequence(other)
            && self.dims == other.dims
            && self.context == other.context
    }
}

/// Everything the batcher needs to know about its model version.
#[derive(Debug, Clone)]
pub struct BatcherSettings {
    pub model: String,
    pub version: u64,
    pub queue: QueuePolicy,
    /// `None`: one request per batch.
    pub batching: Option<BatchingConfig>,
    pub max_batch_size: usize,
    pub instances: usize,
    /// Input names in the order batches carry them.
    pub input_names: Vec<String>,
    /// (output name, dim, index into `input_names`) for padded outputs to cut.
    pub cut_outputs: Vec<(String, usize, usize)>,
}

impl BatcherSettings {
    /// The settings a model version's config and signature give.
    pub fn for_model(
        name: &str,
        version: u64,
        config: &ModelConfig,
        signature: &Signature,
        instances: usize,
    ) -> Self {
        let input_names: Vec<String> = signature.inputs.iter().map(|s| s.name.clone()).collect();
        let cut_outputs = config
            .dynamic_batching
            .as_ref()
            .map(|b| {
                b.padding
                    .outputs
                    .iter()
                    .filter_map(|(output, cut)| {
                        // The length to keep is the request's own size of that input's padded dim.
                        let index = input_names.iter().position(|n| *n == cut.length_of)?;
                        Some((output.clone(), cut.dim, index))
                    })
                    .collect()
            })
            .unwrap_or_default();
        BatcherSettings {
            model: name.to_owned(),
            version,
            queue: config.queue.clone(),
            batching: config.dynamic_batching.clone(),
            max_batch_size: (config.max_batch_size as usize).max(1),
            instances,
            input_names,
            cut_outputs,
        }
    }
}

/// The batch sizes a model will run (for warm-up): 1, its preferred sizes
/// and its maximum when it batches.
pub fn batch_sizes_in_use(config: &ModelConfig) -> Vec<usize> {
    let mut sizes = vec![1usize];
    if config.max_batch_size > 0 {
        if let Some(batching) = &config.dynamic_batching {
            sizes.extend(batching.preferred_batch_sizes.iter().map(|&p| p as usize));
        }
        sizes.push(config.max_batch_size as usize);
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The request side: cheap to clone, shared by every request of the version.
#[derive(Clone)]
pub struct BatcherHandle {
    shared: Arc<Shared>,
    /// The last handle gone closes the queue (drain, then stop).
    _open: Arc<Open>,
    metrics: ModelMetrics,
}

/// Held by every handle; dropped with the last one.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A request for `submit`: its inputs already validated against the model.
pub struct Submission {
    pub inputs: Vec<Tensor>,
    /// 1 = most urgent; `None` = the model's default.
    pub priority: Option<u32>,
    /// Asked-for timeout; the model's default applies when shorter or unset.
    pub timeout: Option<Duration>,
    /// What a forwarding runtime passes on (`None` for the others).
    pub context: Option<Arc<RequestContext>>,
}

impl BatcherHandle {
    /// Queues a request and waits for its answer (or its deadline).
    pub async fn submit(&self, submission: Submission) -> Reply {
        let settings = &self.shared.settings;
        let queue = &settings.queue;
        let priority = submission.priority.unwrap_or(queue.default_priority);
        if !(1..=queue.priority_levels).contains(&priority) {
            return Err(ApiError::invalid(format!(
                "priority {priority} is out of range: model `{}` has priority levels 1 to {}",
                settings.model, queue.priority_levels
            )));
        }
        let level = (priority - 1) as usize;
        let timeout = match (submission.timeout, queue.default_timeout) {
            (Some(asked), Some(default)) => Some(asked.min(default)),
            (asked, default) => asked.or(default),
        };
        let now = Instant::now();
        let bound = now + queue.max_request_time;
        let (deadline, bounded_by_server) = match timeout.map(|t| now + t) {
            Some(deadline) if deadline <= bound => (deadline, false),
            _ => (bound, true),
        };
        let rows = submission.inputs.first().map_or(1, Tensor::rows);
        let key = MergeKey {
            dims: merge_dims(&submission.inputs, settings),
            context: submission.context,
        };

        let _in_flight = self.metrics.in_flight();
        let (reply, answer) = oneshot::channel();
        self.shared.admit(
            Pending {
                inputs: submission.inputs,
                rows,
                key,
                level,
                enqueued: now,
                deadline,
                bounded_by_server,
                reply,
                span: tracing::Span::current(),
                _queued: tracing::info_span!("queue", priority),
            },
            priority,
        )?;
        let answer = async {
            answer.await.unwrap_or_else(|_| {
                Err(ApiError::internal(format!(
                    "model `{}` version {}: the request was lost before it was answered",
                    settings.model, settings.version
                )))
            })
        };
        // Also bounds a request already running in a long batch.
        let reply = match tokio::time::timeout_at(deadline, answer).await {
            Ok(reply) => reply,
            Err(_) => Err(self.expired(bounded_by_server)),
        };
        self.metrics
            .stats
            .answered(rows, reply.is_ok(), now.elapsed());
        reply
    }

    /// Counts a request whose deadline passed and says why.
    fn expired(&self, bounded_by_server: bool) -> ApiError {
        self.metrics.rejected(expiry_reason(bounded_by_server));
        expiry_error(&self.shared.settings, bounded_by_server)
    }

    /// The version's statistics (the statistics extension).
    pub fn stats(&self) -> &crate::metrics::VersionStats {
        &self.metrics.stats
    }

    /// Requests waiting in the queue (all levels).
    pub fn queue_depth(&self) -> usize {
        self.shared.queue_depth()
    }
}

fn expiry_reason(bounded_by_server: bool) -> Rejection {
    if bounded_by_server {
        Rejection::MaxRequestTime
    } else {
        Rejection::Timeout
    }
}

fn expiry_error(settings: &BatcherSettings, bounded_by_server: bool) -> ApiError {
    if bounded_by_server {
        return ApiError::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "model `{}` version {}: the request was not answered within {:?}, the server's bound on any request (--max-request-time, or the model's queue.max_request_time_us)",
                settings.model, settings.version, settings.queue.max_request_time
            ),
        );
    }
    let kind = match settings.queue.timeout_action {
        TimeoutAction::Reject => ErrorKind::DeadlineExceeded,
        TimeoutAction::Overloaded => ErrorKind::Overloaded,
    };
    ApiError::new(
        kind,
        format!(
            "model `{}` version {}: the request's timeout passed before it was served",
            settings.model, settings.version
        ),
    )
}

fn merge_dims(inputs: &[Tensor], settings: &BatcherSettings) -> Vec<Vec<i64>> {
    inputs
        .iter()
        .map(|t| {
            let mut dims = t.shape().get(1..).unwrap_or_default().to_vec();
            if let Some(batching) = &settings.batching
                && let Some(pad) = batching.padding.inputs.get(t.name())
                && let Some(d) = dims.get_mut(pad.dim - 1)
            {
                *d = -1;
            }
            dims
        })
        .collect()
}

/// Creates the queue and its timer task; returns the handle and the
/// receiving end idle workers take batches from.
pub fn spawn(
    settings: BatcherSettings,
    metrics: ModelMetrics,
) -> (BatcherHandle, mpsc::Receiver<Batch>) {
    let (shared, batches) =
        Shared::new(Arc::new(settings), ComputeTable::default(), metrics.clone());
    // Not tracked: the task ends by itself once every handle is dropped and the queue is drained.
    tokio::spawn(shared.clone().run_timer());
    (
        BatcherHandle {
            _open: Arc::new(Open(shared.clone())),
            shared,
            metrics,
        },
        batches,
    )
}

#[cfg(test)]
mod tests;
