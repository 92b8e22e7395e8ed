//! A worker thread: it owns one runtime instance, runs batches (a panic
//! fails that batch only) and answers each request, then takes the next
//! batch due from its version's queue itself, or waits idle for one handed
//! off; the breaker marks the version unhealthy after repeated failures.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_runtimes::{Runtime, RuntimeError};
use tokio::sync::mpsc;
use tracing::error;

use crate::error::ApiError;
use crate::metrics::ModelMetrics;
use crate::serve::batcher::Batch;

/// Trips after repeated failed batches: the version then refuses requests
/// (503, readiness false) for a cool-down, and serves again after it; one more
/// failure trips it again at once, a success resets it.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive: std::sync::atomic::AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    pub(super) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            consecutive: std::sync::atomic::AtomicU32::new(0),
            open_until: Mutex::new(None),
        }
    }

    pub(super) fn record(&self, ok: bool) {
        use std::sync::atomic::Ordering;
        if ok {
            self.consecutive.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold
            && let Ok(mut open) = self.open_until.lock()
        {
            if open.is_none_or(|until| until <= Instant::now()) {
                tracing::warn!(failures, cooldown = ?self.cooldown, "Model version failing repeatedly; marked unhealthy.");
            }
            *open = Some(Instant::now() + self.cooldown);
        }
    }

    pub(super) fn reason(&self) -> Option<String> {
        let open = self.open_until.lock().ok()?;
        open.filter(|until| *until > Instant::now()).map(|until| {
            format!(
                "{} batches failed in a row; unhealthy for another {:?}",
                self.consecutive.load(std::sync::atomic::Ordering::Relaxed),
                until.saturating_duration_since(Instant::now())
            )
        })
    }
}

pub(super) fn worker(
    label: String,
    mut runtime: Box<dyn Runtime>,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    metrics: ModelMetrics,
    breaker: Arc<Breaker>,
) {
    let mut next: Option<Batch> = None;
    loop {
        let batch = match next.take() {
            Some(batch) => batch,
            // Idle: one worker waits on the channel at a time; the others wait for the lock.
            None => match batches.lock() {
                Ok(mut receiver) => match receiver.blocking_recv() {
                    Some(batch) => batch,
                    None => break,
                },
                Err(_) => break,
            },
        };
        // One runtime call serves every request in the batch: child of the
        // first request's span, linked to the others.
        let span = tracing::info_span!(parent: batch.spans.first().and_then(|s| s.id()), "runtime", worker = %label, rows = batch.rows(), requests = batch.len());
        for other in batch.spans.iter().skip(1) {
            span.follows_from(other);
        }
        let call = switchyard_runtimes::Call {
            traceparent: crate::telemetry::traceparent(&span),
            deadline: batch.deadline,
            request: batch.context.clone(),
        };
        let _entered = span.enter();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.run_blocks(&batch.blocks, &call))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            error!(worker = %label, panic = %what, "Runtime panicked; the batch failed, the worker goes on.");
            Err(RuntimeError::Execution(format!("the runtime panicked: {what}")))
        });
        let took = started.elapsed();
        metrics.observe_compute(took);
        metrics.stats.executed(batch.rows(), batch.len(), took);
        batch.record_compute(took);
        // A runtime that cannot take an empty tensor (ONNX Runtime and libtorch
        // mostly can) refuses that input: a 400, and no mark against the model.
        let result = match result {
            Err(RuntimeError::Execution(reason)) if batch.has_empty_input() => {
                Err(RuntimeError::InvalidInput(format!(
                    "the model cannot run zero-size inputs: {reason}"
                )))
            }
            other => other,
        };
        // Only faults of the model count, not bad input or an unreachable upstream.
        breaker.record(!matches!(result, Err(RuntimeError::Execution(_))));
        next = batch.complete_and_take_next(result.map_err(ApiError::from));
    }
    // The version is retired: free its session now and hand the memory back.
    drop(runtime);
    crate::memory::release_free_memory();
}
