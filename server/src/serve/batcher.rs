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
//! Requests merge only when every input has the same non-batch dimensions,
//! except along dims the config pads. A request is never split.
//! Deadlines are driven by a timer: a queued request whose deadline passes is
//! answered then, not when a slot frees. Callers that go away (client
//! disconnect, cancelled gRPC call) are dropped from the queue unrun.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use switchyard_runtimes::{DataType, Tensor};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::model::{BatchingConfig, QueuePolicy, TimeoutAction};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{ModelMetrics, Rejection};

pub type Reply = Result<Vec<Tensor>, ApiError>;

/// How often queued requests whose callers left are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// A queued request.
struct Pending {
    inputs: Vec<Tensor>,
    rows: usize,
    /// Non-batch dims of every input, padded dims blanked: requests with equal keys merge.
    key: Vec<Vec<i64>>,
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

/// A formed batch, handed to a worker. Dropping it without `complete` fails its requests.
pub struct Batch {
    /// Per signature input, the requests' row blocks in request order (padded
    /// when padding applies); the runtime joins them (`Runtime::run_blocks`).
    pub blocks: Vec<Vec<Tensor>>,
    requests: Vec<(usize, Vec<i64>, oneshot::Sender<Reply>)>,
    cut: Vec<(String, usize, usize)>,
    compute: ComputeTable,
    /// The spans of the requests in the batch, for the worker's runtime span.
    pub spans: Vec<tracing::Span>,
    _slot: SlotGuard,
}

/// Measured compute seconds per batch size, shared by the workers and the adaptive rule.
pub type ComputeTable = Arc<std::sync::Mutex<Vec<(usize, f64)>>>;

impl Batch {
    /// The blocks joined along dimension 0, one tensor per input.
    pub fn joined_inputs(&self) -> Result<Vec<Tensor>, switchyard_runtimes::TensorError> {
        self.blocks
            .iter()
            .map(|parts| Tensor::concat_rows(parts))
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.requests.iter().map(|(rows, _, _)| rows).sum()
    }

    /// Whether some input of the whole batch has no elements (zero rows, or a
    /// zero non-batch dimension): a runtime that refuses it refuses the input,
    /// not a fault of the model.
    pub fn has_empty_input(&self) -> bool {
        self.blocks
            .iter()
            .any(|parts| parts.iter().all(|t| t.element_count() == 0))
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Records how long the runtime took for this batch (feeds the adaptive delay).
    pub fn record_compute(&self, elapsed: Duration) {
        Adaptive::observe_compute(&self.compute, self.rows(), elapsed.as_secs_f64());
    }

    /// Splits the outputs back to each request (row-exact) and answers them.
    pub fn complete(mut self, result: Result<Vec<Tensor>, ApiError>) {
        let requests = std::mem::take(&mut self.requests);
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(err) => {
                for (_, _, reply) in requests {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            }
        };
        if requests.len() == 1 && self.cut.is_empty() {
            if let Some((_, _, reply)) = requests.into_iter().next() {
                let _ = reply.send(Ok(outputs));
            }
            return;
        }
        let rows: Vec<usize> = requests.iter().map(|(rows, _, _)| *rows).collect();
        let mut per_request: Vec<Vec<Tensor>> = requests
            .iter()
            .map(|_| Vec::with_capacity(outputs.len()))
            .collect();
        for output in &outputs {
            let parts = match output.split_rows(&rows) {
                Ok(parts) => parts,
                Err(_) => {
                    let err = ApiError::internal(format!(
                        "output `{}` has shape {:?}, which does not split into the batch's {} rows",
                        output.name(),
                        output.shape(),
                        rows.iter().sum::<usize>()
                    ));
                    for (_, _, reply) in requests {
                        let _ = reply.send(Err(err.clone()));
                    }
                    return;
                }
            };
            for (i, part) in parts.into_iter().enumerate() {
                per_request[i].push(part);
            }
        }
        for ((_, lengths, reply), mut outputs) in requests.into_iter().zip(per_request) {
            let cut = self.cut_outputs(&mut outputs, &lengths);
            let _ = reply.send(cut.map(|()| outputs));
        }
    }

    /// Cuts padded outputs back to this request's own lengths.
    fn cut_outputs(&self, outputs: &mut [Tensor], lengths: &[i64]) -> Result<(), ApiError> {
        for (name, dim, length_index) in &self.cut {
            let Some(output) = outputs.iter_mut().find(|t| t.name() == name) else {
                continue;
            };
            let length = lengths.get(*length_index).copied().unwrap_or(0);
            if output.shape().get(*dim).is_some_and(|&have| have > length) {
                *output = resize_dim(output, *dim, length, 0.0)?;
            }
        }
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for (_, _, reply) in self.requests.drain(..) {
            let _ = reply.send(Err(ApiError::internal(
                "the batch was dropped before it ran",
            )));
        }
    }
}

/// Keeps a worker slot counted as busy until the batch is gone.
struct SlotGuard {
    busy: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
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

/// The request side: cheap to clone, shared by every request of the version.
#[derive(Clone)]
pub struct BatcherHandle {
    settings: Arc<BatcherSettings>,
    sender: mpsc::Sender<Pending>,
    queued: Arc<Vec<AtomicUsize>>,
    metrics: ModelMetrics,
}

/// A request for `submit`: its inputs already validated against the model.
pub struct Submission {
    pub inputs: Vec<Tensor>,
    /// 1 = most urgent; `None` = the model's default.
    pub priority: Option<u32>,
    /// Asked-for timeout; the model's default applies when shorter or unset.
    pub timeout: Option<Duration>,
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
        let key = merge_key(&submission.inputs, settings);

        let _in_flight = self.metrics.in_flight();
        // Admission: claim a place in the level or refuse at once.
        let counter = &self.queued[level];
        if counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < queue.capacity).then_some(n + 1)
            })
            .is_err()
        {
            self.metrics.rejected(Rejection::QueueFull);
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                format!(
                    "model `{}` version {} is overloaded: its priority-{priority} queue of {} requests is full; retry later",
                    settings.model, settings.version, queue.capacity
                ),
            ));
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
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
        };
        if self.sender.try_send(pending).is_err() {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(format!(
                "model `{}` version {} is shutting down",
                settings.model, settings.version
            )));
        }
        self.metrics.queue_depth_add(1);
        let answer = async {
            answer.await.unwrap_or_else(|_| {
                Err(ApiError::internal(format!(
                    "model `{}` version {}: the request was lost before it was answered",
                    settings.model, settings.version
                )))
            })
        };
        // Also bounds a request already running in a long batch.
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(reply) => reply,
            Err(_) => Err(self.expired(bounded_by_server)),
        }
    }

    /// Counts a request whose deadline passed and says why.
    fn expired(&self, bounded_by_server: bool) -> ApiError {
        self.metrics.rejected(expiry_reason(bounded_by_server));
        expiry_error(&self.settings, bounded_by_server)
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

fn merge_key(inputs: &[Tensor], settings: &BatcherSettings) -> Vec<Vec<i64>> {
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
    let state = Batcher {
        settings: settings.clone(),
        levels: (0..levels).map(|_| VecDeque::new()).collect(),
        rows_waiting: 0,
        requests_waiting: 0,
        queued: queued.clone(),
        busy: Arc::new(AtomicUsize::new(0)),
        freed: Arc::new(Notify::new()),
        next_deadline: None,
        adaptive: Adaptive::default(),
        metrics: metrics.clone(),
    };
    // Not tracked: the task ends by itself once every handle is dropped and the queue is drained.
    tokio::spawn(state.run(receiver, dispatch));
    (
        BatcherHandle {
            settings,
            sender,
            queued,
            metrics,
        },
        batches,
    )
}

struct Batcher {
    settings: Arc<BatcherSettings>,
    levels: Vec<VecDeque<Pending>>,
    /// Rows decide batch sizes; requests decide whether there is work (a
    /// request may have zero rows and still needs its answer).
    rows_waiting: usize,
    requests_waiting: usize,
    queued: Arc<Vec<AtomicUsize>>,
    busy: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    next_deadline: Option<Instant>,
    adaptive: Adaptive,
    metrics: ModelMetrics,
}

impl Batcher {
    async fn run(mut self, mut incoming: mpsc::Receiver<Pending>, dispatch: mpsc::Sender<Batch>) {
        let mut closing = false;
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            let now = Instant::now();
            if self.next_deadline.is_some_and(|d| d <= now) {
                self.expire(now);
            }
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + SWEEP_INTERVAL;
            }
            if closing && self.requests_waiting == 0 {
                break;
            }
            let (ready, wake_for_delay) = self.readiness(now, closing);
            let wake = [
                wake_for_delay,
                self.next_deadline,
                (self.requests_waiting > 0).then_some(next_sweep),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                permit = dispatch.reserve(), if ready => {
                    let Ok(permit) = permit else { break };
                    if let Some(batch) = self.form(Instant::now()) {
                        permit.send(batch);
                    }
                }
                message = incoming.recv(), if !closing => match message {
                    Some(pending) => self.push(pending),
                    None => closing = true,
                },
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            }
        }
        // Anything left (the workers are gone) is answered, not lost.
        for pending in self.levels.iter_mut().flat_map(|q| q.drain(..)) {
            let _ = pending.reply.send(Err(ApiError::unavailable(format!(
                "model `{}` version {} was unloaded before the request ran",
                self.settings.model, self.settings.version
            ))));
        }
    }

    fn push(&mut self, pending: Pending) {
        self.rows_waiting += pending.rows;
        self.requests_waiting += 1;
        let deadline = pending.deadline;
        self.next_deadline = Some(self.next_deadline.map_or(deadline, |d| d.min(deadline)));
        self.levels[pending.level].push_back(pending);
    }

    fn release(&mut self, pending: &Pending) {
        self.rows_waiting -= pending.rows;
        self.requests_waiting -= 1;
        self.queued[pending.level].fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth_add(-1);
    }

    /// Answers every queued request whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        let mut next = None;
        let mut expired = Vec::new();
        for level in 0..self.levels.len() {
            let queue = std::mem::take(&mut self.levels[level]);
            for pending in queue {
                if pending.deadline <= now {
                    expired.push(pending);
                } else {
                    let d = pending.deadline;
                    next = Some(next.map_or(d, |n: Instant| n.min(d)));
                    self.levels[level].push_back(pending);
                }
            }
        }
        self.next_deadline = next;
        for pending in expired {
            self.release(&pending);
            // A caller that already gave up (its own timer fired first) counted itself.
            if !pending.reply.is_closed() {
                self.metrics
                    .rejected(expiry_reason(pending.bounded_by_server));
                let error = expiry_error(&self.settings, pending.bounded_by_server);
                let _ = pending.reply.send(Err(error));
            }
        }
    }

    /// Drops queued requests whose callers have gone.
    fn sweep(&mut self) {
        for level in 0..self.levels.len() {
            let queue = std::mem::take(&mut self.levels[level]);
            for pending in queue {
                if pending.reply.is_closed() {
                    self.release(&pending);
                    self.metrics.rejected(Rejection::Cancelled);
                } else {
                    self.levels[level].push_back(pending);
                }
            }
        }
    }

    fn oldest(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|q| q.front())
            .map(|p| p.enqueued)
            .min()
    }

    /// Whether a batch should go now, and when to look again if not.
    fn readiness(&self, now: Instant, closing: bool) -> (bool, Option<Instant>) {
        if self.requests_waiting == 0 {
            return (false, None);
        }
        let Some(batching) = &self.settings.batching else {
            return (true, None);
        };
        let idle = self.busy.load(Ordering::Acquire) < self.settings.instances;
        if closing
            || self.rows_waiting >= self.settings.max_batch_size
            || (batching.dispatch_when_idle && idle)
        {
            return (true, None);
        }
        if batching
            .preferred_batch_sizes
            .first()
            .is_some_and(|&p| self.rows_waiting >= p as usize)
        {
            return (true, None);
        }
        let Some(oldest) = self.oldest() else {
            return (false, None);
        };
        let due = match batching.adaptive_latency_budget {
            Some(budget) => {
                let age = now.saturating_duration_since(oldest);
                now + self
                    .adaptive
                    .delay(self.rows_waiting, age, budget, batching.max_queue_delay)
            }
            None => oldest + batching.max_queue_delay,
        };
        if due <= now {
            (true, None)
        } else {
            (false, Some(due))
        }
    }

    /// Takes the next batch: the oldest request of the most urgent level, then
    /// every queued request that can join it, in priority then arrival order.
    fn form(&mut self, now: Instant) -> Option<Batch> {
        let merge = self.settings.batching.is_some();
        let limit = if merge {
            self.target_rows()
        } else {
            usize::MAX
        };
        let mut taken: Vec<Pending> = Vec::new();
        let mut rows = 0;
        let mut key: Option<Vec<Vec<i64>>> = None;
        'levels: for level in 0..self.levels.len() {
            let mut index = 0;
            while index < self.levels[level].len() {
                let candidate = &self.levels[level][index];
                if candidate.reply.is_closed() {
                    if let Some(gone) = self.levels[level].remove(index) {
                        self.release(&gone);
                        self.metrics.rejected(Rejection::Cancelled);
                    }
                    continue;
                }
                let fits = match &key {
                    None => true,
                    Some(k) => merge && *k == candidate.key && rows + candidate.rows <= limit,
                };
                if !fits {
                    if !merge || rows + candidate.rows > limit {
                        break 'levels;
                    }
                    index += 1;
                    continue;
                }
                let Some(pending) = self.levels[level].remove(index) else {
                    break;
                };
                key.get_or_insert_with(|| pending.key.clone());
                rows += pending.rows;
                self.release(&pending);
                taken.push(pending);
                if !merge || rows >= limit {
                    break 'levels;
                }
            }
        }
        if taken.is_empty() {
            return None;
        }
        for pending in &taken {
            self.metrics
                .observe_queue_time(now.saturating_duration_since(pending.enqueued));
        }
        self.metrics.observe_batch(rows);
        self.adaptive.observe_arrivals(now, rows);
        let batch = self.assemble(taken);
        match batch {
            Ok(batch) => Some(batch),
            Err((err, replies)) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
                None
            }
        }
    }

    /// The batch size to aim for: max, or the largest preferred size that the
    /// rows waiting can fill.
    fn target_rows(&self) -> usize {
        let max = self.settings.max_batch_size;
        let preferred = self
            .settings
            .batching
            .as_ref()
            .map(|b| b.preferred_batch_sizes.as_slice())
            .unwrap_or_default();
        if self.rows_waiting >= max {
            return max;
        }
        preferred
            .iter()
            .rev()
            .map(|&p| p as usize)
            .find(|&p| p <= self.rows_waiting)
            .unwrap_or(max)
    }

    /// Gathers (and pads) the requests' inputs into per-input row blocks. The
    /// copy that joins them happens on a worker thread, or not at all when the
    /// runtime copies blocks straight to its device.
    #[allow(clippy::type_complexity)]
    fn assemble(
        &self,
        taken: Vec<Pending>,
    ) -> Result<Batch, (ApiError, Vec<oneshot::Sender<Reply>>)> {
        let padding = self.settings.batching.as_ref().map(|b| &b.padding);
        let mut blocks = Vec::with_capacity(self.settings.input_names.len());
        let mut lengths: Vec<Vec<i64>> = vec![Vec::new(); taken.len()];
        let result: Result<(), ApiError> = (|| {
            for name in &self.settings.input_names {
                let parts: Vec<&Tensor> = taken
                    .iter()
                    .map(|p| p.inputs.iter().find(|t| t.name() == name))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        ApiError::internal(format!("a batched request lacks input `{name}`"))
                    })?;
                let pad = padding.and_then(|p| p.inputs.get(name));
                for (i, part) in parts.iter().enumerate() {
                    let length = pad
                        .and_then(|p| part.shape().get(p.dim).copied())
                        .unwrap_or(0);
                    lengths[i].push(length);
                }
                let input_blocks: Vec<Tensor> = match pad {
                    Some(pad) if parts.len() > 1 => {
                        let target = parts
                            .iter()
                            .filter_map(|t| t.shape().get(pad.dim).copied())
                            .max()
                            .unwrap_or(0);
                        parts
                            .iter()
                            .map(|t| resize_dim(t, pad.dim, target, pad.value))
                            .collect::<Result<_, _>>()?
                    }
                    // Clones share the request buffers (`Bytes`): no copy here.
                    _ => parts.into_iter().cloned().collect(),
                };
                blocks.push(input_blocks);
            }
            Ok(())
        })();
        let cut = if taken.len() > 1 {
            self.settings.cut_outputs.clone()
        } else {
            Vec::new()
        };
        let spans: Vec<tracing::Span> = taken.iter().map(|p| p.span.clone()).collect();
        let requests: Vec<(usize, Vec<i64>, oneshot::Sender<Reply>)> = taken
            .into_iter()
            .zip(lengths)
            .map(|(p, lengths)| (p.rows, lengths, p.reply))
            .collect();
        if let Err(err) = result {
            return Err((err, requests.into_iter().map(|(_, _, r)| r).collect()));
        }
        self.busy.fetch_add(1, Ordering::AcqRel);
        Ok(Batch {
            blocks,
            requests,
            cut,
            compute: self.adaptive.compute.clone(),
            spans,
            _slot: SlotGuard {
                busy: self.busy.clone(),
                freed: self.freed.clone(),
            },
        })
    }
}

/// Resizes `tensor` along `dim` to `target` entries: keeps the first ones and,
/// when growing, fills the rest with `fill` (padding on the way in, cutting it
/// back off on the way out).
fn resize_dim(tensor: &Tensor, dim: usize, target: i64, fill: f64) -> Result<Tensor, ApiError> {
    let shape = tensor.shape();
    if dim >= shape.len() || shape[dim] == target {
        return Ok(tensor.clone());
    }
    let size = tensor.datatype().element_size().ok_or_else(|| {
        ApiError::invalid(format!(
            "`{}`: BYTES tensors cannot be padded or cut",
            tensor.name()
        ))
    })?;
    let fill = pad_value_bytes(tensor.datatype(), fill);
    let outer: usize = shape[..dim].iter().map(|&d| d as usize).product();
    let inner: usize = shape[dim + 1..].iter().map(|&d| d as usize).product();
    let (have, target) = (shape[dim] as usize, target.max(0) as usize);
    let keep = have.min(target);
    let data = tensor.data();
    let mut buf = BytesMut::with_capacity(outer * target * inner * size);
    for o in 0..outer {
        let start = o * have * inner * size;
        buf.put_slice(&data[start..start + keep * inner * size]);
        for _ in 0..(target - keep) * inner {
            buf.put_slice(&fill[..size]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[dim] = target as i64;
    Ok(Tensor::new(
        tensor.name(),
        tensor.datatype(),
        new_shape,
        buf.freeze(),
    )?)
}

fn pad_value_bytes(datatype: DataType, value: f64) -> [u8; 8] {
    let mut out = [0u8; 8];
    let bytes: Vec<u8> = match datatype {
        DataType::Bool => vec![u8::from(value != 0.0)],
        DataType::Uint8 => vec![value as u8],
        DataType::Int8 => (value as i8).to_le_bytes().to_vec(),
        DataType::Uint16 => (value as u16).to_le_bytes().to_vec(),
        DataType::Int16 => (value as i16).to_le_bytes().to_vec(),
        DataType::Uint32 => (value as u32).to_le_bytes().to_vec(),
        DataType::Int32 => (value as i32).to_le_bytes().to_vec(),
        DataType::Uint64 => (value as u64).to_le_bytes().to_vec(),
        DataType::Int64 => (value as i64).to_le_bytes().to_vec(),
        DataType::Fp16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DataType::Bf16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DataType::Fp32 => (value as f32).to_le_bytes().to_vec(),
        DataType::Fp64 => value.to_le_bytes().to_vec(),
        DataType::Bytes => Vec::new(),
    };
    out[..bytes.len()].copy_from_slice(&bytes);
    out
}

/// The adaptive delay rule. It keeps an estimate of the arrival rate λ (rows/s,
/// exponentially weighted) and of the compute time c(b) per batch size (fed by
/// the workers). With n rows waiting, waiting Δ longer is worth it only when
/// the expected batch, n + λΔ rows, finishes sooner per row than n rows now:
///   (Δ + c(n + λΔ)) / (n + λΔ)  <  c(n) / n
/// and the oldest request still meets the latency budget:
///   age + Δ + c(n + λΔ) ≤ budget.
/// The delay is the largest Δ (from a geometric ladder up to the budget) that
/// satisfies both; with no estimate yet it falls back to `max_queue_delay`.
#[derive(Debug, Default)]
pub struct Adaptive {
    rate: Option<f64>,
    last: Option<Instant>,
    /// (batch rows, EWMA compute seconds), sorted by rows.
    compute: ComputeTable,
}

impl Adaptive {
    fn observe_arrivals(&mut self, now: Instant, rows: usize) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64().max(1e-6);
            let instant_rate = rows as f64 / dt;
            self.rate = Some(match self.rate {
                Some(r) => 0.8 * r + 0.2 * instant_rate,
                None => instant_rate,
            });
        }
        self.last = Some(now);
    }

    /// Records how long a batch of `rows` took (called by workers).
    pub fn observe_compute(
        compute: &std::sync::Mutex<Vec<(usize, f64)>>,
        rows: usize,
        seconds: f64,
    ) {
        let Ok(mut table) = compute.lock() else {
            return;
        };
        match table.binary_search_by_key(&rows, |&(r, _)| r) {
            Ok(i) => table[i].1 = 0.8 * table[i].1 + 0.2 * seconds,
            Err(i) => table.insert(i, (rows, seconds)),
        }
    }

    fn compute_estimate(table: &[(usize, f64)], rows: usize) -> Option<f64> {
        let after = table.iter().position(|&(r, _)| r >= rows);
        match after {
            Some(0) => table
                .first()
                .map(|&(r, s)| s * rows as f64 / r.max(1) as f64),
            Some(i) => {
                let (r0, s0) = table[i - 1];
                let (r1, s1) = table[i];
                let t = (rows - r0) as f64 / (r1 - r0).max(1) as f64;
                Some(s0 + t * (s1 - s0))
            }
            None => table
                .last()
                .map(|&(r, s)| s * rows as f64 / r.max(1) as f64),
        }
    }

    /// Without estimates yet (no arrivals or compute seen), the fixed delay applies.
    #[cfg(test)]
    fn seeded(rate: f64, table: Vec<(usize, f64)>) -> Self {
        Adaptive {
            rate: Some(rate),
            last: None,
            compute: Arc::new(std::sync::Mutex::new(table)),
        }
    }

    /// Extra time to wait from now (zero: send now).
    fn delay(
        &self,
        waiting: usize,
        age: Duration,
        budget: Duration,
        fallback: Duration,
    ) -> Duration {
        let Ok(table) = self.compute.lock() else {
            return fallback;
        };
        let (Some(rate), false) = (self.rate, table.is_empty()) else {
            return fallback;
        };
        let Some(now_cost) = Self::compute_estimate(&table, waiting) else {
            return fallback;
        };
        let per_row_now = now_cost / waiting.max(1) as f64;
        let budget = budget.as_secs_f64() - age.as_secs_f64();
        let mut best = 0.0;
        let mut delta = 20e-6;
        while delta < budget {
            let expected = waiting as f64 + rate * delta;
            let cost =
                Self::compute_estimate(&table, expected.round() as usize).unwrap_or(now_cost);
            if delta + cost > budget {
                break;
            }
            if (delta + cost) / expected < per_row_now {
                best = delta;
            }
            delta *= 2.0;
        }
        Duration::from_secs_f64(best)
    }
}

#[cfg(test)]
mod tests {
    //! The batcher as a state machine under paused time; the test plays the
    //! worker, receiving batches and completing them when it chooses.

    use super::*;
    use crate::config::model::{PadInput, Padding};
    use crate::metrics::Metrics;
    use std::collections::BTreeMap;

    fn queue(capacity: usize, levels: u32) -> QueuePolicy {
        QueuePolicy {
            capacity,
            priority_levels: levels,
            default_priority: levels,
            default_timeout: None,
            timeout_action: TimeoutAction::Reject,
            max_request_time: Duration::from_secs(300),
        }
    }

    fn batching(delay_ms: u64, preferred: Vec<u32>, idle: bool) -> BatchingConfig {
        BatchingConfig {
            max_queue_delay: Duration::from_millis(delay_ms),
            preferred_batch_sizes: preferred,
            dispatch_when_idle: idle,
            adaptive_latency_budget: None,
            padding: Padding::default(),
        }
    }

    fn settings(
        batching: Option<BatchingConfig>,
        queue: QueuePolicy,
        max: usize,
    ) -> BatcherSettings {
        BatcherSettings {
            model: "m".into(),
            version: 1,
            queue,
            batching,
            max_batch_size: max,
            instances: 1,
            input_names: vec!["x".into()],
            cut_outputs: Vec::new(),
        }
    }

    fn start(settings: BatcherSettings) -> (BatcherHandle, mpsc::Receiver<Batch>) {
        spawn(settings, Metrics::new().unwrap().for_model("m", 1))
    }

    /// A request of `rows` rows whose values are `tag`, with `width` columns.
    fn rows(rows: usize, width: usize, tag: f32) -> Vec<Tensor> {
        vec![
            Tensor::from_slice(
                "x",
                DataType::Fp32,
                vec![rows as i64, width as i64],
                &vec![tag; rows * width],
            )
            .unwrap(),
        ]
    }

    fn submit(
        handle: &BatcherHandle,
        inputs: Vec<Tensor>,
        priority: Option<u32>,
        timeout_ms: Option<u64>,
    ) -> tokio::task::JoinHandle<Reply> {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .submit(Submission {
                    inputs,
                    priority,
                    timeout: timeout_ms.map(Duration::from_millis),
                })
                .await
        })
    }

    /// Echoes the batch's input as its output: each request must get its own rows back.
    fn echo(batch: Batch) {
        let output = batch.joined_inputs().unwrap()[0].clone().with_name("y");
        batch.complete(Ok(vec![output]));
    }

    fn tags(batch: &Batch) -> Vec<f32> {
        let x = &batch.joined_inputs().unwrap()[0];
        let width = x.shape()[1] as usize;
        x.as_slice::<f32>().iter().step_by(width).copied().collect()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_the_delay_then_takes_everything_queued() {
        let (handle, mut batches) =
            start(settings(Some(batching(5, vec![], false)), queue(64, 1), 8));
        let started = Instant::now();
        let replies: Vec<_> = (0..3)
            .map(|i| submit(&handle, rows(1, 2, i as f32), None, None))
            .collect();
        settle().await;
        assert!(batches.try_recv().is_err(), "nothing before the delay");
        let batch = batches.recv().await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        assert_eq!(tags(&batch), vec![0.0, 1.0, 2.0]);
        echo(batch);
        for (i, reply) in replies.into_iter().enumerate() {
            let out = reply.await.unwrap().unwrap();
            assert_eq!(out[0].shape(), &[1, 2]);
            assert_eq!(out[0].as_slice::<f32>().as_ref(), &[i as f32; 2]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once() {
        let (handle, mut batches) = start(settings(
            Some(batching(1000, vec![], false)),
            queue(64, 1),
            8,
        ));
        let started = Instant::now();
        let _replies: Vec<_> = (0..4)
            .map(|_| submit(&handle, rows(2, 1, 0.0), None, None))
            .collect();
        let batch = batches.recv().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(batch.rows(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn preferred_sizes_cut_the_batch() {
        let (handle, mut batches) = start(settings(
            Some(batching(10, vec![4], false)),
            queue(64, 1),
            16,
        ));
        let started = Instant::now();
        let _replies: Vec<_> = (0..6)
            .map(|i| submit(&handle, rows(1, 1, i as f32), None, None))
            .collect();
        settle().await;
        let first = batches.recv().await.unwrap();
        assert_eq!(first.rows(), 4);
        assert_eq!(tags(&first), vec![0.0, 1.0, 2.0, 3.0]);
        echo(first);
        // The other 2 rows wait for the delay.
        let second = batches.recv().await.unwrap();
        assert_eq!(second.rows(), 2);
        assert_eq!(started.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_instance_takes_work_without_waiting() {
        let (handle, mut batches) = start(settings(
            Some(batching(1000, vec![], true)),
            queue(64, 1),
            8,
        ));
        let started = Instant::now();
        let reply = submit(&handle, rows(1, 1, 7.0), None, None);
        let batch = batches.recv().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "no delay at low load");
        echo(batch);
        assert!(reply.await.unwrap().is_ok());
        // While the instance is busy, requests gather into the next batch.
        let _a = submit(&handle, rows(1, 1, 1.0), None, None);
        let busy = batches.recv().await.unwrap();
        let _b = submit(&handle, rows(1, 1, 2.0), None, None);
        let _c = submit(&handle, rows(1, 1, 3.0), None, None);
        settle().await;
        // The prefetch slot takes a batch only after the delay (1 s) while busy.
        assert!(batches.try_recv().is_err());
        echo(busy);
        let gathered = batches.recv().await.unwrap();
        assert_eq!(tags(&gathered), vec![2.0, 3.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn priorities_are_strict_and_fifo_within_a_level() {
        // No merging: one request per batch, so order is visible.
        let (handle, mut batches) = start(settings(None, queue(64, 2), 1));
        let _first = submit(&handle, rows(1, 1, 0.0), Some(2), None);
        settle().await; // formed, waiting in the hand-off slot
        let _low1 = submit(&handle, rows(1, 1, 1.0), Some(2), None);
        let _low2 = submit(&handle, rows(1, 1, 2.0), Some(2), None);
        settle().await;
        let _high = submit(&handle, rows(1, 1, 3.0), Some(1), None);
        settle().await;
        let mut order = Vec::new();
        for _ in 0..4 {
            let batch = batches.recv().await.unwrap();
            order.push(tags(&batch)[0]);
            echo(batch);
        }
        assert_eq!(order, vec![0.0, 3.0, 1.0, 2.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_level_refuses_at_once_and_bad_priorities_are_errors() {
        let (handle, _batches) = start(settings(None, queue(2, 2), 1));
        let _in_slot = submit(&handle, rows(1, 1, 0.0), None, None);
        settle().await;
        let _q1 = submit(&handle, rows(1, 1, 0.0), None, None);
        let _q2 = submit(&handle, rows(1, 1, 0.0), None, None);
        settle().await;
        let started = Instant::now();
        let refused = submit(&handle, rows(1, 1, 0.0), None, None)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Overloaded);
        assert!(
            refused.message.contains("queue of 2 requests is full"),
            "{}",
            refused.message
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        // The other level still has room.
        let other = submit(&handle, rows(1, 1, 0.0), Some(1), None);
        settle().await;
        assert!(!other.is_finished());
        let bad = submit(&handle, rows(1, 1, 0.0), Some(3), None)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(bad.kind, ErrorKind::InvalidArgument);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fires_at_its_deadline_even_while_a_long_batch_runs() {
        let (handle, mut batches) =
            start(settings(Some(batching(0, vec![], true)), queue(64, 1), 8));
        let started = Instant::now();
        let reply = submit(&handle, rows(1, 1, 0.0), None, Some(5));
        let running = batches.recv().await.unwrap();
        // The worker holds the batch for 50 ms; the request is answered at 5 ms.
        let err = reply.await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
        tokio::time::sleep(Duration::from_millis(45)).await;
        echo(running);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_expires_by_timer_and_leaves_the_queue() {
        let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
        let _busy = submit(&handle, rows(1, 1, 0.0), None, None);
        settle().await;
        let started = Instant::now();
        let waiting = submit(&handle, rows(1, 1, 1.0), None, Some(5));
        settle().await;
        assert_eq!(handle.queue_depth(), 1);
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        settle().await;
        assert_eq!(handle.queue_depth(), 0, "expired requests leave the queue");
        // It never reaches a worker.
        let first = batches.recv().await.unwrap();
        echo(first);
        settle().await;
        assert!(batches.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_overloaded_timeout_action_answers_429() {
        let mut policy = queue(64, 1);
        policy.timeout_action = TimeoutAction::Overloaded;
        policy.default_timeout = Some(Duration::from_millis(3));
        let (handle, _batches) = start(settings(None, policy, 1));
        let _busy = submit(&handle, rows(1, 1, 0.0), None, None);
        // Asking for more than the default gets the default.
        let err = submit(&handle, rows(1, 1, 0.0), None, Some(100))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overloaded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_is_removed_unrun() {
        let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
        let _busy = submit(&handle, rows(1, 1, 0.0), None, None);
        settle().await;
        let gone = submit(&handle, rows(1, 1, 1.0), None, None);
        let kept = submit(&handle, rows(1, 1, 2.0), None, None);
        settle().await;
        assert_eq!(handle.queue_depth(), 2);
        gone.abort();
        tokio::time::sleep(SWEEP_INTERVAL * 2).await;
        assert_eq!(handle.queue_depth(), 1, "swept out while still queued");
        let first = batches.recv().await.unwrap();
        echo(first);
        let next = batches.recv().await.unwrap();
        assert_eq!(tags(&next), vec![2.0]);
        echo(next);
        assert!(kept.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn different_shapes_never_share_a_batch() {
        let (handle, mut batches) =
            start(settings(Some(batching(1, vec![], false)), queue(64, 1), 16));
        let a = submit(&handle, rows(1, 3, 1.0), None, None);
        let b = submit(&handle, rows(2, 4, 2.0), None, None);
        let c = submit(&handle, rows(1, 3, 3.0), None, None);
        let first = batches.recv().await.unwrap();
        assert_eq!(first.joined_inputs().unwrap()[0].shape(), &[2, 3]);
        assert_eq!(tags(&first), vec![1.0, 3.0]);
        echo(first);
        let second = batches.recv().await.unwrap();
        assert_eq!(second.joined_inputs().unwrap()[0].shape(), &[2, 4]);
        echo(second);
        for reply in [a, b, c] {
            assert!(reply.await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn padding_merges_lengths_and_cuts_outputs_back() {
        let mut config = batching(1, vec![], false);
        config.padding = Padding {
            inputs: BTreeMap::from([(
                "x".to_owned(),
                PadInput {
                    dim: 1,
                    value: -1.0,
                },
            )]),
            outputs: BTreeMap::new(),
        };
        let mut s = settings(Some(config), queue(64, 1), 16);
        s.cut_outputs = vec![("y".into(), 1, 0)];
        let (handle, mut batches) = start(s);
        let short = submit(&handle, rows(1, 2, 1.0), None, None);
        let long = submit(&handle, rows(1, 4, 2.0), None, None);
        let batch = batches.recv().await.unwrap();
        let joined = batch.joined_inputs().unwrap();
        assert_eq!(joined[0].shape(), &[2, 4]);
        assert_eq!(
            joined[0].as_slice::<f32>().as_ref(),
            &[1.0, 1.0, -1.0, -1.0, 2.0, 2.0, 2.0, 2.0]
        );
        echo(batch);
        let short = short.await.unwrap().unwrap();
        assert_eq!(short[0].shape(), &[1, 2]);
        assert_eq!(short[0].as_slice::<f32>().as_ref(), &[1.0, 1.0]);
        assert_eq!(long.await.unwrap().unwrap()[0].shape(), &[1, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn outputs_split_row_exactly_and_errors_reach_everyone() {
        let (handle, mut batches) =
            start(settings(Some(batching(1, vec![], false)), queue(64, 1), 16));
        let replies: Vec<_> = [1usize, 3, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| submit(&handle, rows(n, 1, i as f32), None, None))
            .collect();
        let batch = batches.recv().await.unwrap();
        assert_eq!(batch.rows(), 6);
        echo(batch);
        for (i, (reply, n)) in replies.into_iter().zip([1usize, 3, 2]).enumerate() {
            let out = reply.await.unwrap().unwrap();
            assert_eq!(
                out[0].as_slice::<f32>().as_ref(),
                vec![i as f32; n].as_slice()
            );
        }
        let a = submit(&handle, rows(1, 1, 0.0), None, None);
        let b = submit(&handle, rows(1, 1, 0.0), None, None);
        let batch = batches.recv().await.unwrap();
        batch.complete(Err(ApiError::internal("boom")));
        assert_eq!(a.await.unwrap().unwrap_err().message, "boom");
        assert_eq!(b.await.unwrap().unwrap_err().message, "boom");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_drains_the_queue_then_stops() {
        let (handle, mut batches) = start(settings(None, queue(64, 1), 1));
        let replies: Vec<_> = (0..3)
            .map(|i| submit(&handle, rows(1, 1, i as f32), None, None))
            .collect();
        settle().await;
        drop(handle);
        for _ in 0..3 {
            echo(batches.recv().await.unwrap());
        }
        assert!(
            batches.recv().await.is_none(),
            "the channel closes once drained"
        );
        for reply in replies {
            assert!(reply.await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_row_requests_are_answered_batching_on_and_off() {
        for batching in [None, Some(batching(5, vec![], false))] {
            let (handle, mut batches) = start(settings(batching.clone(), queue(8, 1), 8));
            // Alone: the batch holds no rows but still goes to the runtime.
            let empty = submit(&handle, rows(0, 3, 0.0), None, None);
            let batch = batches
                .recv()
                .await
                .expect("a zero-row request forms a batch");
            assert_eq!((batch.rows(), batch.len()), (0, 1));
            echo(batch);
            let answer = empty.await.unwrap().unwrap();
            assert_eq!(answer[0].shape(), &[0, 3]);
            // Beside rows of others: each gets its own share back.
            let a = submit(&handle, rows(2, 3, 1.0), None, None);
            let b = submit(&handle, rows(0, 3, 0.0), None, None);
            let c = submit(&handle, rows(1, 3, 2.0), None, None);
            settle().await;
            while let Ok(Some(batch)) =
                tokio::time::timeout(Duration::from_millis(50), batches.recv()).await
            {
                echo(batch);
            }
            let shapes: Vec<Vec<i64>> = [a, b, c]
                .into_iter()
                .map(|reply| async { reply.await.unwrap().unwrap()[0].shape().to_vec() })
                .collect::<futures::future::JoinAll<_>>()
                .await;
            assert_eq!(
                shapes,
                vec![vec![2, 3], vec![0, 3], vec![1, 3]],
                "{batching:?}"
            );
            drop(handle);
            assert!(batches.recv().await.is_none(), "nothing is left behind");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_bound_fails_a_request_no_one_answers() {
        let mut policy = queue(4, 1);
        policy.max_request_time = Duration::from_secs(2);
        let (handle, mut batches) = start(settings(None, policy, 8));
        // Running: the worker holds the batch and never completes it.
        let running = submit(&handle, rows(1, 1, 0.0), None, None);
        let held = batches.recv().await.unwrap();
        // Queued behind it.
        let queued = submit(&handle, rows(1, 1, 1.0), None, None);
        settle().await;
        tokio::time::advance(Duration::from_millis(2001)).await;
        for reply in [running, queued] {
            let err = reply.await.unwrap().unwrap_err();
            assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
            assert!(err.message.contains("server's bound"), "{}", err.message);
        }
        assert_eq!(handle.queue_depth(), 0, "the queued request left the queue");
        drop(held);
        // A shorter timeout of the request's own is still its own.
        let own = submit(&handle, rows(1, 1, 0.0), None, Some(5));
        let _held = batches.recv().await.unwrap();
        tokio::time::advance(Duration::from_millis(6)).await;
        let err = own.await.unwrap().unwrap_err();
        assert!(err.message.contains("timeout passed"), "{}", err.message);
    }

    #[test]
    fn adaptive_delay_waits_only_when_it_pays() {
        // 2 ms fixed cost + 10 µs per row: batching pays a lot.
        let table: Vec<(usize, f64)> = [1usize, 8, 32, 128]
            .iter()
            .map(|&b| (b, 0.002 + b as f64 * 10e-6))
            .collect();
        let busy = Adaptive::seeded(20_000.0, table.clone());
        let wait = busy.delay(
            1,
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_micros(100),
        );
        assert!(wait > Duration::ZERO, "worth waiting at 20k rows/s");
        // Within budget: never waits past it.
        let tight = busy.delay(
            1,
            Duration::from_millis(19),
            Duration::from_millis(20),
            Duration::from_micros(100),
        );
        assert_eq!(tight, Duration::ZERO);
        // Almost no traffic: waiting gathers nobody.
        let quiet = Adaptive::seeded(1.0, table);
        assert_eq!(
            quiet.delay(
                1,
                Duration::ZERO,
                Duration::from_millis(20),
                Duration::from_micros(100)
            ),
            Duration::ZERO
        );
        // No estimates yet: the fixed delay.
        let fresh = Adaptive::default();
        assert_eq!(
            fresh.delay(
                1,
                Duration::ZERO,
                Duration::from_millis(20),
                Duration::from_micros(100)
            ),
            Duration::from_micros(100)
        );
    }
}
