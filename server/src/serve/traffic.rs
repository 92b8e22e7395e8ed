//! Live traffic state for routed endpoints: per-variant outcome windows (what
//! the canary controller in `control::canary` judges) and the bounded queue of
//! shadow copies. Shadow work never delays or fails the primary
//! request: copies are offered with `try_send`, dropped (and counted) when
//! the queue is full, and their results are only recorded: success, latency,
//! and how their outputs agree with the stable answer (`agreement`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_runtimes::Tensor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::serve::model::ModelVersion;

use crate::config::routes::LATENCY_BUCKET_GROWTH as GROWTH;

/// Latency buckets: bucket `i` holds [GROWTH^i, GROWTH^(i+1)) µs (1% wide),
/// up to ~2 minutes (1.01^1870 µs ≈ 124 s).
const BUCKETS: usize = 1870;

/// Outcomes of one variant since the controller last looked. Lock-free: a
/// request adds to two atomics; the controller swaps them out.
pub struct Window {
    ok: AtomicU64,
    failed: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Window {
    pub fn record(&self, ok: bool, latency: Duration) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            let us = latency.as_secs_f64() * 1e6;
            let bucket = if us <= 1.0 {
                0
            } else {
                (us.ln() / GROWTH.ln()) as usize
            };
            self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads and clears the window.
    pub fn take(&self) -> WindowSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let ok = self.ok.swap(0, Ordering::Relaxed);
        let failed = self.failed.swap(0, Ordering::Relaxed);
        let total: u64 = counts.iter().sum();
        let mut p99_ms = 0.0;
        if total > 0 {
            let rank = (total as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (i, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    // Upper edge of the bucket: never under-reports.
                    p99_ms = GROWTH.powi(i as i32 + 1) / 1000.0;
                    break;
                }
            }
        }
        WindowSnapshot { ok, failed, p99_ms }
    }
}

/// Outcome counts and a latency estimate for one variant over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowSnapshot {
    pub ok: u64,
    pub failed: u64,
    pub p99_ms: f64,
}

impl WindowSnapshot {
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    pub fn success_rate(&self) -> f64 {
        if self.total() == 0 {
            100.0
        } else {
            self.ok as f64 * 100.0 / self.total() as f64
        }
    }
}

/// A copy of a request for a shadow variant.
pub struct ShadowJob {
    pub endpoint: String,
    /// The window its outcome and agreement are recorded in (`Shadow::window`).
    pub window: String,
    pub model: Arc<ModelVersion>,
    pub inputs: Vec<Tensor>,
    /// Set when the request it copies is captured: the shadow's answer is too.
    pub capture: Option<crate::serve::capture::Pending>,
    /// The stable answer to the same request, to compare with (set once it
    /// has answered; `None` when it failed: nothing to compare).
    pub stable: Option<Vec<Tensor>>,
    pub tolerance: crate::config::routes::Tolerance,
}

pub struct Traffic {
    windows: Mutex<HashMap<(String, String), Arc<Window>>>,
    /// Each endpoint's shadow output agreement since the controller last looked.
    agreements: Mutex<HashMap<String, crate::serve::agreement::Agreement>>,
    shadow: mpsc::Sender<ShadowJob>,
    shadow_jobs: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    metrics: Metrics,
    capture: Option<Arc<crate::serve::capture::Capture>>,
}

/// Shadow copies waiting to run, across all endpoints.
const SHADOW_QUEUE: usize = 256;
/// Shadow copies running at once.
const SHADOW_WORKERS: usize = 4;

impl Traffic {
    pub fn new(metrics: Metrics, capture: Option<Arc<crate::serve::capture::Capture>>) -> Self {
        let (shadow, jobs) = mpsc::channel(SHADOW_QUEUE);
        Traffic {
            windows: Mutex::new(HashMap::new()),
            agreements: Mutex::new(HashMap::new()),
            shadow,
            shadow_jobs: Mutex::new(Some(jobs)),
            metrics,
            capture,
        }
    }

    pub fn window(&self, endpoint: &str, variant: &str) -> Arc<Window> {
        let Ok(mut windows) = self.windows.lock() else {
            return Arc::new(Window::default());
        };
        windows
            .entry((endpoint.to_owned(), variant.to_owned()))
            .or_default()
            .clone()
    }

    /// Records a routed request's outcome (for the canary and the metrics).
    pub fn record(&self, endpoint: &str, variant: &str, ok: bool, latency: Duration) {
        self.window(endpoint, variant).record(ok, latency);
        self.metrics.observe_endpoint(
            endpoint,
            variant,
            if ok { "success" } else { "failure" },
            latency,
        );
    }

    /// Reads and clears an endpoint's shadow agreement.
    pub fn take_agreement(&self, endpoint: &str) -> crate::serve::agreement::Agreement {
        self.agreements
            .lock()
            .ok()
            .and_then(|mut a| a.remove(endpoint))
            .unwrap_or_default()
    }

    fn add_agreement(&self, endpoint: &str, comparisons: &[crate::serve::agreement::Comparison]) {
        if let Ok(mut agreements) = self.agreements.lock() {
            agreements
                .entry(endpoint.to_owned())
                .or_default()
                .add(comparisons);
        }
    }

    /// Offers a shadow copy; never waits.
    pub fn offer_shadow(&self, job: ShadowJob) {
        let endpoint = job.endpoint.clone();
        if self.shadow.try_send(job).is_err() {
            self.metrics.shadow_dropped(&endpoint);
        }
    }
}

/// Runs shadow copies until `cancel`; results are recorded, never returned.
pub async fn run_shadow_workers(traffic: Arc<Traffic>, cancel: CancellationToken) {
    let Some(jobs) = traffic.shadow_jobs.lock().ok().and_then(|mut j| j.take()) else {
        return;
    };
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..SHADOW_WORKERS {
        let jobs = jobs.clone();
        let traffic = traffic.clone();
        let cancel = cancel.clone();
        workers.spawn(async move {
            loop {
                let job = tokio::select! {
                    _ = cancel.cancelled() => break,
                    job = async { jobs.lock().await.recv().await } => job,
                };
                let Some(job) = job else { break };
                let started = Instant::now();
                // Lowest priority: shadow work yields to real traffic on a shared model.
                let priority = Some(job.model.config.queue.priority_levels);
                let result = job.model.infer(job.inputs, priority, None, None).await;
                let (ok, took) = (result.is_ok(), started.elapsed());
                traffic.window(&job.window, "shadow").record(ok, took);
                let outcome = if ok { "success" } else { "failure" };
                traffic
                    .metrics
                    .observe_endpoint(&job.endpoint, "shadow", outcome, took);
                if let (Ok(shadow), Some(stable)) = (&result, &job.stable) {
                    let comparisons =
                        crate::serve::agreement::compare(stable, shadow, job.tolerance);
                    traffic.add_agreement(&job.window, &comparisons);
                    let agreed = comparisons
                        .iter()
                        .all(|c| c.verdict == crate::serve::agreement::Verdict::Agree);
                    traffic
                        .metrics
                        .shadow_request_compared(&job.endpoint, agreed);
                    for c in comparisons {
                        traffic.metrics.shadow_compared(
                            &job.endpoint,
                            &c.output,
                            c.verdict.as_label(),
                            c.max_abs_diff,
                            c.mean_abs_diff,
                            c.argmax,
                        );
                    }
                }
                if let (Some(capture), Some(pending)) = (&traffic.capture, job.capture) {
                    let outcome = result.as_deref();
                    capture.offer(pending.finish(&job.model, started.elapsed(), outcome));
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentile_is_an_upper_bound_within_one_percent() {
        let w = Window::default();
        for i in 1..=1000u64 {
            w.record(true, Duration::from_micros(i * 10));
        }
        w.record(false, Duration::ZERO);
        let s = w.take();
        assert_eq!((s.ok, s.failed), (1000, 1));
        assert!(s.p99_ms >= 9.9 && s.p99_ms <= 9.9 * GROWTH, "{}", s.p99_ms);
        assert_eq!(
            w.take(),
            WindowSnapshot::default(),
            "taking clears the window"
        );
    }

    #[test]
    fn identical_traffic_never_trips_the_smallest_ratio_allowed() {
        // The same latency distribution, shifted by up to a few percent of
        // jitter, in two windows: their p99s stay within MIN_P99_RATIO.
        use crate::config::routes::MIN_P99_RATIO;
        for base in [137u64, 950, 4_321, 88_000, 2_500_000] {
            for shift in 0..20u64 {
                let (a, b) = (Window::default(), Window::default());
                for i in 0..500u64 {
                    let us = base + (i * base) / 500;
                    a.record(true, Duration::from_micros(us));
                    b.record(true, Duration::from_micros(us + shift * base / 2000));
                }
                let (a, b) = (a.take().p99_ms, b.take().p99_ms);
                assert!(
                    b / a < MIN_P99_RATIO && a / b < MIN_P99_RATIO,
                    "{base} {shift}: {a} vs {b}"
                );
            }
        }
    }
}
