//! The request queue and dynamic batcher of one model version.
//!
//! One task owns the queue state and forms batches; requests reach it through
//! a bounded channel and each carries its own `oneshot` reply. Admission never
//! waits: per-priority counters refuse a request at once when its level is
//! full. Formed batches go to the worker threads through a channel of
//! capacity 1 ("prefetch one batch"), so a busy model keeps requests in the
//! queue (where they can still merge, expire or be cancelled) instead of
//! piling up behind the workers.
//!
//! A batch is sent when a worker slot is free and one of these holds:
//! * the rows waiting reach `max_batch_size` or a preferred batch size;
//! * the oldest request has waited `max_queue_delay` (or, when adaptive, the
//!   delay the adaptive rule picks, see `Adaptive`);
//! * an instance is idle and `dispatch_when_idle` is on: at low load a request
//!   never waits for company it will not get, and under load requests gather
//!   while every instance is busy ("natural" batching);
//! * the model is shutting down (drain what is queued).
//!
//! The idle fast path: when nothing is queued and an instance is idle, and a
//! lone request would go at once anyway (no batching, or `dispatch_when_idle`
//! without an adaptive delay), the request side hands it to the workers'
//! channel itself, as a batch of one. The waiting worker is the only thread
//! woken; the batcher task never sees it. A returning slot wakes the batcher
//! only when requests are queued (`Slots::release`).
//!
//! Requests merge only when every input has the same non-batch dimensions,
//! except along dims the config pads. A request is never split.
//! Deadlines are driven by a timer: a queued request whose deadline passes is
//! answered then, not when a slot frees. Callers that go away (client
//! disconnect, cancelled gRPC call) are dropped from the queue unrun.
//!
//! The folder follows the seams: `batch` (a formed batch, its row blocks and
//! how outputs split back), `queue` (the task that owns the queue and forms
//! batches), `padding` (resizing along padded dims), `adaptive` (the delay
//! rule). This file holds the request side: settings, admission, deadlines.

mod adaptive;
mod batch;
mod padding;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_runtimes::{RequestContext, Signature, Tensor};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::model::{BatchingConfig, ModelConfig, QueuePolicy, TimeoutAction};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{ModelMetrics, Rejection};
pub use batch::{Batch, ComputeTable};
use batch::{SlotGuard, Slots};
use queue::Batcher;

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
    settings: Arc<BatcherSettings>,
    sender: mpsc::Sender<Pending>,
    queued: Arc<Vec<AtomicUsize>>,
    metrics: ModelMetrics,
    /// Hands a request straight to an idle instance when nothing is queued
    /// (`None` where a lone request would wait: no `dispatch_when_idle`, or an
    /// adaptive delay, which must see every arrival).
    direct: Option<Direct>,
}

/// The idle fast path: the workers' channel and slots, shared with the batcher task.
#[derive(Clone)]
struct Direct {
    dispatch: mpsc::Sender<Batch>,
    slots: Arc<Slots>,
    compute: ComputeTable,
}

impl Direct {
    /// Claims an idle instance and a place in the workers' channel, if the
    /// queue is empty (so nobody waiting is overtaken).
    fn claim(&self, instances: usize) -> Option<(mpsc::Permit<'_, Batch>, SlotGuard)> {
        if self.slots.anything_queued() {
            return None;
        }
        self.slots
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < instances).then_some(n + 1)
            })
            .ok()?;
        let slot = SlotGuard {
            slots: self.slots.clone(),
        };
        // Full: the batcher's prefetched batch is there first (the slot goes back).
        let permit = self.dispatch.try_reserve().ok()?;
        Some((permit, slot))
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
        let settings = &self.settings;
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
        let direct = self
            .direct
            .as_ref()
            .and_then(|d| Some((d, d.claim(settings.instances)?)))
            .and_then(|(d, claimed)| {
                // In the order batches carry inputs (all present: validated).
                let ordered = settings
                    .input_names
                    .iter()
                    .map(|name| submission.inputs.iter().find(|t| t.name() == name).cloned())
                    .collect::<Option<Vec<Tensor>>>()?;
                Some((d, claimed, ordered))
            });
        match direct {
            Some((direct, (permit, slot), inputs)) => {
                // One wake-up: the waiting worker takes it; the batcher task never sees it.
                // Its wait in the queue is nil, but traces show it like every other.
                drop(tracing::info_span!("queue", priority));
                self.metrics.observe_queue_time(Duration::ZERO);
                self.metrics.observe_batch(rows);
                permit.send(Batch::single(
                    inputs,
                    rows,
                    reply,
                    direct.compute.clone(),
                    key.context,
                    deadline,
                    slot,
                ));
            }
            None => self.enqueue(
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
            )?,
        }
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

    /// Admits a request to its priority level's queue (or refuses it at once)
    /// and hands it to the batcher task.
    fn enqueue(&self, pending: Pending, priority: u32) -> Result<(), ApiError> {
        let settings = &self.settings;
        let queue = &settings.queue;
        // Admission: claim a place in the level or refuse at once.
        let counter = &self.queued[pending.level];
        if counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < queue.capacity).then_some(n + 1)
            })
            .is_err()
        {
            self.metrics.rejected(Rejection::QueueFull);
            self.metrics
                .stats
                .answered(pending.rows, false, pending.enqueued.elapsed());
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "model `{}` version {} is overloaded: its priority-{priority} queue of {} requests is full; retry later",
                    settings.model, settings.version, queue.capacity
                ),
            ));
        }
        if self.sender.try_send(pending).is_err() {
            counter.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::unavailable(format!(
                "model `{}` version {} is shutting down",
                settings.model, settings.version
            )));
        }
        self.metrics.queue_depth_add(1);
        Ok(())
    }

    /// Counts a request whose deadline passed and says why.
    fn expired(&self, bounded_by_server: bool) -> ApiError {
        self.metrics.rejected(expiry_reason(bounded_by_server));
        expiry_error(&self.settings, bounded_by_server)
    }

    /// The version's statistics (the statistics extension).
    pub fn stats(&self) -> &crate::metrics::VersionStats {
        &self.metrics.stats
    }

    /// Requests waiting in the queue (all levels).
    pub fn queue_depth(&self) -> usize {
        self.queued.iter().map(|c| c.load(Ordering::Acquire)).sum()
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

/// Creates the batcher task; returns its handle and the receiving end workers take batches from.
pub fn spawn(
    settings: BatcherSettings,
    metrics: ModelMetrics,
) -> (BatcherHandle, mpsc::Receiver<Batch>) {
    let settings = Arc::new(settings);
    let levels = settings.queue.priority_levels as usize;
    let total = settings.queue.capacity.saturating_mul(levels).max(1);
    let (sender, receiver) = mpsc::channel(total);
    let (dispatch, batches) = mpsc::channel(1);
    let queued: Arc<Vec<AtomicUsize>> =
        Arc::new((0..levels).map(|_| AtomicUsize::new(0)).collect());
    let slots = Arc::new(Slots {
        busy: AtomicUsize::new(0),
        freed: tokio::sync::Notify::new(),
        queued: queued.clone(),
    });
    let compute = ComputeTable::default();
    // Only where an idle instance would take a lone request at once anyway:
    // a delay that waits for company, or picks itself from every arrival, needs the queue.
    let takes_lone_requests = settings
        .batching
        .as_ref()
        .is_none_or(|b| b.dispatch_when_idle && b.adaptive_latency_budget.is_none());
    let direct = takes_lone_requests.then(|| Direct {
        dispatch: dispatch.clone(),
        slots: slots.clone(),
        compute: compute.clone(),
    });
    let state = Batcher::new(settings.clone(), slots, compute, metrics.clone());
    // Not tracked: the task ends by itself once every handle is dropped and the queue is drained.
    tokio::spawn(state.run(receiver, dispatch));
    (
        BatcherHandle {
            settings,
            sender,
            queued,
            metrics,
            direct,
        },
        batches,
    )
}

#[cfg(test)]
mod tests;
