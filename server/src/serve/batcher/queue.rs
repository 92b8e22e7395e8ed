//! The queue of one model version, shared by everyone who moves work through
//! it: the request side pushes (and forms a batch at once when an instance is
//! free and one is due), a worker that finishes a batch takes its next one
//! itself, and the timer task answers expired requests, sweeps out callers
//! that left and sends a batch whose delay has passed to an idle instance.
//! All of it under one short lock; nobody else needs to be woken for a batch
//! to go, so a busy instance runs back to back without a hand-off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_runtimes::Tensor;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::batch::{Batch, ComputeTable, SlotGuard};
use super::padding::resize_dim;
use super::{BatcherSettings, Pending, Reply, expiry_error, expiry_reason};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{ModelMetrics, Rejection};

/// How often queued requests whose callers left are swept out.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// What every party of one version shares.
pub(super) struct Shared {
    pub(super) settings: Arc<BatcherSettings>,
    state: Mutex<Queue>,
    /// Batches for instances waiting idle (capacity: one per instance, so a
    /// send never finds it full: every batch in it counts as busy).
    dispatch: mpsc::Sender<Batch>,
    /// Makes the timer task look sooner than it planned.
    timer: Notify,
    metrics: ModelMetrics,
}

/// The queued requests and the instances' slots.
struct Queue {
    settings: Arc<BatcherSettings>,
    levels: Vec<VecDeque<Pending>>,
    /// Rows decide batch sizes; requests decide whether there is work (a
    /// request may have zero rows and still needs its answer).
    rows_waiting: usize,
    requests_waiting: usize,
    /// Batches out (handed off or running); at most one per instance.
    busy: usize,
    /// The earliest deadline queued (may be of a request already gone: then
    /// the timer only looks once for nothing).
    next_deadline: Option<Instant>,
    /// When the timer task looks next (`None`: not until notified).
    timer_at: Option<Instant>,
    /// Every handle is gone: drain what is queued, then stop.
    closing: bool,
    adaptive: Adaptive,
    metrics: ModelMetrics,
}

impl Shared {
    /// The shared queue and the receiving end the workers take handed-off batches from.
    pub(super) fn new(
        settings: Arc<BatcherSettings>,
        compute: ComputeTable,
        metrics: ModelMetrics,
    ) -> (Arc<Self>, mpsc::Receiver<Batch>) {
        let (dispatch, batches) = mpsc::channel(settings.instances.max(1));
        let levels = settings.queue.priority_levels as usize;
        let queue = Queue {
            settings: settings.clone(),
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            rows_waiting: 0,
            requests_waiting: 0,
            busy: 0,
            next_deadline: None,
            timer_at: None,
            closing: false,
            adaptive: Adaptive::with_compute(compute),
            metrics: metrics.clone(),
        };
        let shared = Arc::new(Shared {
            settings,
            state: Mutex::new(queue),
            dispatch,
            timer: Notify::new(),
            metrics,
        });
        (shared, batches)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing under the lock panics halfway through an update; a poisoned
        // lock still holds a consistent queue.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a request to its priority level (or refuses it at once). When an
    /// instance is free and a batch is due, the batch goes from here: the
    /// waiting instance is the only thread woken.
    pub(super) fn admit(self: &Arc<Self>, pending: Pending, priority: u32) -> Result<(), ApiError> {
        let settings = &self.settings;
        let rows = pending.rows;
        let enqueued = pending.enqueued;
        let (batch, notify) = {
            let mut queue = self.lock();
            if queue.closing || self.dispatch.is_closed() {
                return Err(ApiError::unavailable(format!(
                    "model `{}` version {} is shutting down",
                    settings.model, settings.version
                )));
            }
            if queue.levels[pending.level].len() >= settings.queue.capacity {
                drop(queue);
                self.metrics.rejected(Rejection::QueueFull);
                self.metrics.stats.answered(rows, false, enqueued.elapsed());
                return Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "model `{}` version {} is overloaded: its priority-{priority} queue of {} requests is full; retry later",
                        settings.model, settings.version, settings.queue.capacity
                    ),
                ));
            }
            queue.push(pending);
            let now = Instant::now();
            let batch = queue.take_if_free(self, now);
            (batch, queue.plan_timer(now))
        };
        if notify {
            self.timer.notify_one();
        }
        if let Some(batch) = batch {
            self.hand_off(batch);
        }
        Ok(())
    }

    /// A slot comes back; returns the next batch due, already counted busy,
    /// for the caller to run or hand off.
    pub(super) fn release(self: &Arc<Self>) -> Option<Batch> {
        let (batch, notify) = {
            let mut queue = self.lock();
            queue.busy -= 1;
            if self.dispatch.is_closed() {
                // The workers are gone: the timer task answers what is queued.
                (None, true)
            } else {
                let now = Instant::now();
                let batch = queue.take_if_free(self, now);
                let drained = queue.closing && queue.requests_waiting == 0;
                (batch, queue.plan_timer(now) || drained)
            }
        };
        if notify {
            self.timer.notify_one();
        }
        batch
    }

    /// Gives a batch to an idle instance. A batch that cannot go (the workers
    /// are gone) is dropped, which answers its requests.
    pub(super) fn hand_off(&self, batch: Batch) {
        let _ = self.dispatch.try_send(batch);
    }

    /// Whether a batch waits that is as large as it will get (or the model
    /// does not batch): waiting longer would not grow it.
    pub(super) fn full_batch_waiting(&self) -> bool {
        let Some(batching) = &self.settings.batching else {
            return true;
        };
        let queue = self.lock();
        queue.closing
            || queue.rows_waiting >= self.settings.max_batch_size
            || batching
                .preferred_batch_sizes
                .first()
                .is_some_and(|&p| queue.rows_waiting >= p as usize)
    }

    /// Every handle is gone: drain, then stop.
    pub(super) fn close(&self) {
        self.lock().closing = true;
        self.timer.notify_one();
    }

    /// Requests waiting (all levels).
    pub(super) fn queue_depth(&self) -> usize {
        self.lock().requests_waiting
    }

    /// The timer task: deadlines, sweeps, delays that pass while an instance is idle.
    pub(super) async fn run_timer(self: Arc<Self>) {
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            let (batches, wake) = {
                let mut queue = self.lock();
                let now = Instant::now();
                if queue.next_deadline.is_some_and(|d| d <= now) {
                    queue.expire(now);
                }
                if now >= next_sweep {
                    queue.sweep();
                    next_sweep = now + SWEEP_INTERVAL;
                }
                if self.dispatch.is_closed() || (queue.closing && queue.requests_waiting == 0) {
                    break;
                }
                let mut batches = Vec::new();
                while let Some(batch) = queue.take_if_free(&self, now) {
                    batches.push(batch);
                }
                let wake = queue.wake_time(now, next_sweep);
                queue.timer_at = wake;
                (batches, wake)
            };
            for batch in batches {
                self.hand_off(batch);
            }
            tokio::select! {
                _ = self.timer.notified() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
        // Anything left (the workers are gone) is answered, not lost.
        let left: Vec<Pending> = {
            let mut queue = self.lock();
            let left: Vec<Pending> = queue.levels.iter_mut().flat_map(|q| q.drain(..)).collect();
            for pending in &left {
                queue.dequeued(pending);
            }
            left
        };
        for pending in left {
            let _ = pending.reply.send(Err(ApiError::unavailable(format!(
                "model `{}` version {} was unloaded before the request ran",
                self.settings.model, self.settings.version
            ))));
        }
    }
}

impl Queue {
    fn push(&mut self, pending: Pending) {
        self.rows_waiting += pending.rows;
        self.requests_waiting += 1;
        self.metrics.queue_depth_add(1);
        let deadline = pending.deadline;
        self.next_deadline = Some(self.next_deadline.map_or(deadline, |d| d.min(deadline)));
        self.levels[pending.level].push_back(pending);
    }

    /// Accounts for a request that left the queue.
    fn dequeued(&mut self, pending: &Pending) {
        self.rows_waiting -= pending.rows;
        self.requests_waiting -= 1;
        self.metrics.queue_depth_add(-1);
    }

    /// The next batch due, if an instance is free for it (counted busy).
    fn take_if_free(&mut self, shared: &Arc<Shared>, now: Instant) -> Option<Batch> {
        if self.busy >= self.settings.instances {
            return None;
        }
        loop {
            let (ready, _) = self.readiness(now);
            if !ready {
                return None;
            }
            // `None` here means the requests looked at were answered (gone,
            // or failed to assemble): fewer wait now, look again.
            if let Some(batch) = self.form(shared, now) {
                return Some(batch);
            }
        }
    }

    /// When the timer must look next: the earliest deadline, the next sweep
    /// while anything waits, and the delay of a batch an idle instance waits for.
    fn wake_time(&self, now: Instant, next_sweep: Instant) -> Option<Instant> {
        if self.requests_waiting == 0 {
            return None;
        }
        let delay = if self.busy < self.settings.instances {
            self.readiness(now).1
        } else {
            // Every instance is busy: the one that finishes looks for itself.
            None
        };
        [delay, self.next_deadline, Some(next_sweep)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the timer must be woken because it would look too late (or not at all).
    fn plan_timer(&mut self, now: Instant) -> bool {
        if self.requests_waiting == 0 {
            return false;
        }
        // The sweep never needs the timer earlier than it planned; a deadline or delay may.
        let needed = [
            self.next_deadline,
            (self.busy < self.settings.instances)
                .then(|| self.readiness(now).1)
                .flatten(),
        ]
        .into_iter()
        .flatten()
        .min();
        match (needed, self.timer_at) {
            (Some(needed), Some(at)) if needed >= at => false,
            (None, Some(_)) => false,
            (Some(needed), _) => {
                self.timer_at = Some(needed);
                true
            }
            // Nothing timed, but the timer must sweep while requests wait.
            (None, None) => {
                self.timer_at = Some(now + SWEEP_INTERVAL);
                true
            }
        }
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
            self.dequeued(&pending);
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
                    self.dequeued(&pending);
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

    /// Whether a batch should go now to a free instance, and when to look
    /// again if not.
    fn readiness(&self, now: Instant) -> (bool, Option<Instant>) {
        if self.requests_waiting == 0 {
            return (false, None);
        }
        let Some(batching) = &self.settings.batching else {
            return (true, None);
        };
        if self.closing
            || self.rows_waiting >= self.settings.max_batch_size
            || batching.dispatch_when_idle
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
    fn form(&mut self, shared: &Arc<Shared>, now: Instant) -> Option<Batch> {
        let merge = self.settings.batching.is_some();
        let limit = if merge {
            self.target_rows()
        } else {
            usize::MAX
        };
        let mut taken: Vec<Pending> = Vec::new();
        let mut rows = 0;
        let mut key: Option<super::MergeKey> = None;
        'levels: for level in 0..self.levels.len() {
            let mut index = 0;
            while index < self.levels[level].len() {
                let candidate = &self.levels[level][index];
                if candidate.reply.is_closed() {
                    if let Some(gone) = self.levels[level].remove(index) {
                        self.dequeued(&gone);
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
                self.dequeued(&pending);
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
        let batch = self.assemble(shared, taken);
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
        &mut self,
        shared: &Arc<Shared>,
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
        // Equal keys: the first request's context is every request's.
        let context = taken.first().and_then(|p| p.key.context.clone());
        let deadline = taken.iter().map(|p| p.deadline).max();
        let requests: Vec<(usize, Vec<i64>, oneshot::Sender<Reply>)> = taken
            .into_iter()
            .zip(lengths)
            .map(|(p, lengths)| (p.rows, lengths, p.reply))
            .collect();
        if let Err(err) = result {
            return Err((err, requests.into_iter().map(|(_, _, r)| r).collect()));
        }
        self.busy += 1;
        Ok(Batch {
            blocks,
            requests,
            cut,
            compute: self.adaptive.compute.clone(),
            spans,
            context,
            deadline: deadline.map(tokio::time::Instant::into_std),
            slot: Some(SlotGuard::new(shared.clone())),
        })
    }
}
