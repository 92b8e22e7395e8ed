//! The batcher task of one model version: it owns the priority queues, sweeps
//! out callers that left, answers expired requests by timer, and forms
//! batches (see the folder's page for when a batch goes).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_runtimes::Tensor;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::batch::{Batch, SlotGuard, Slots};
use super::padding::resize_dim;
use super::{BatcherSettings, Pending, Reply, expiry_error, expiry_reason};
use crate::error::ApiError;
use crate::metrics::{ModelMetrics, Rejection};

/// How often queued requests whose callers left are swept out.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

pub(super) struct Batcher {
    settings: Arc<BatcherSettings>,
    levels: Vec<VecDeque<Pending>>,
    /// Rows decide batch sizes; requests decide whether there is work (a
    /// request may have zero rows and still needs its answer).
    rows_waiting: usize,
    requests_waiting: usize,
    queued: Arc<Vec<AtomicUsize>>,
    slots: Arc<Slots>,
    next_deadline: Option<Instant>,
    adaptive: Adaptive,
    metrics: ModelMetrics,
}

impl Batcher {
    pub(super) fn new(
        settings: Arc<BatcherSettings>,
        slots: Arc<Slots>,
        compute: super::batch::ComputeTable,
        metrics: ModelMetrics,
    ) -> Self {
        let levels = settings.queue.priority_levels as usize;
        Batcher {
            settings,
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            rows_waiting: 0,
            requests_waiting: 0,
            queued: slots.queued.clone(),
            slots,
            next_deadline: None,
            adaptive: Adaptive::with_compute(compute),
            metrics,
        }
    }

    pub(super) async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Pending>,
        dispatch: mpsc::Sender<Batch>,
    ) {
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
                _ = self.slots.freed.notified() => {}
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
        let idle = self.slots.busy.load(Ordering::SeqCst) < self.settings.instances;
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
        let mut key: Option<super::MergeKey> = None;
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
        self.slots.busy.fetch_add(1, Ordering::SeqCst);
        Ok(Batch {
            blocks,
            requests,
            cut,
            compute: self.adaptive.compute.clone(),
            spans,
            context,
            deadline: deadline.map(tokio::time::Instant::into_std),
            _slot: SlotGuard {
                slots: self.slots.clone(),
            },
        })
    }
}
