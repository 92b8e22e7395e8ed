//! Live traffic state for routed endpoints: per-variant outcome windows (what
//! the canary controller judges), the controller itself, and the bounded
//! queue of shadow copies. Shadow work never delays or fails the primary
//! request: copies are offered with `try_send`, dropped (and counted) when
//! the queue is full, and their results are only recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_runtimes::Tensor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::model::ModelVersion;
use crate::routing::{self, CanaryPhase, CanaryPolicy, CanaryState, Decision, WindowSnapshot};
use crate::state::AppState;

/// Latency buckets: bucket `i` holds [1.2^i, 1.2^(i+1)) µs, up to ~2 minutes.
const BUCKETS: usize = 104;

/// Outcomes of one variant since the controller last looked.
pub struct Window {
    ok: AtomicU64,
    failed: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
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
                (us.ln() / 1.2f64.ln()) as usize
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
                    p99_ms = 1.2f64.powi(i as i32 + 1) / 1000.0;
                    break;
                }
            }
        }
        WindowSnapshot { ok, failed, p99_ms }
    }
}

/// A copy of a request for a shadow variant.
pub struct ShadowJob {
    pub endpoint: String,
    pub model: Arc<ModelVersion>,
    pub inputs: Vec<Tensor>,
}

struct CanaryEntry {
    policy: CanaryPolicy,
    state: CanaryState,
    last_check: Instant,
}

pub struct Traffic {
    windows: Mutex<HashMap<(String, String), Arc<Window>>>,
    canaries: Mutex<HashMap<String, CanaryEntry>>,
    shadow: mpsc::Sender<ShadowJob>,
    shadow_jobs: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    metrics: Metrics,
}

/// Shadow copies waiting to run, across all endpoints.
const SHADOW_QUEUE: usize = 256;
/// Shadow copies running at once.
const SHADOW_WORKERS: usize = 4;

impl Traffic {
    pub fn new(metrics: Metrics) -> Self {
        let (shadow, jobs) = mpsc::channel(SHADOW_QUEUE);
        Traffic {
            windows: Mutex::new(HashMap::new()),
            canaries: Mutex::new(HashMap::new()),
            shadow,
            shadow_jobs: Mutex::new(Some(jobs)),
            metrics,
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

    /// Offers a shadow copy; never waits.
    pub fn offer_shadow(&self, job: ShadowJob) {
        let endpoint = job.endpoint.clone();
        if self.shadow.try_send(job).is_err() {
            self.metrics.shadow_dropped(&endpoint);
        }
    }

    /// Status of every canary rollout, by endpoint.
    pub fn canary_states(&self) -> HashMap<String, CanaryState> {
        self.canaries
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| (k.clone(), v.state.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Runs shadow copies until `cancel`; results are recorded, never returned.
pub async fn run_shadow_workers(state: Arc<AppState>, cancel: CancellationToken) {
    let Some(jobs) = state
        .traffic
        .shadow_jobs
        .lock()
        .ok()
        .and_then(|mut j| j.take())
    else {
        return;
    };
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..SHADOW_WORKERS {
        let jobs = jobs.clone();
        let state = state.clone();
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
                let result = job.model.infer(job.inputs, priority, None).await;
                state
                    .traffic
                    .record(&job.endpoint, "shadow", result.is_ok(), started.elapsed());
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Checks every canary rollout once per its interval and moves weights.
pub async fn run_canary_controller(state: Arc<AppState>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let catalog = state.catalog();
        let mut updates: Vec<(String, f64)> = Vec::new();
        {
            let Ok(mut canaries) = state.traffic.canaries.lock() else {
                break;
            };
            canaries.retain(|name, _| {
                catalog
                    .routes
                    .endpoints
                    .get(name)
                    .is_some_and(|e| e.canary.is_some())
            });
            for (name, endpoint) in &catalog.routes.endpoints {
                let Some(policy) = &endpoint.canary else {
                    continue;
                };
                let entry = canaries.entry(name.clone()).or_insert_with(|| CanaryEntry {
                    policy: policy.clone(),
                    state: CanaryState::new(),
                    last_check: Instant::now(),
                });
                if &entry.policy != policy {
                    info!(endpoint = %name, "Canary policy changed; the rollout starts over.");
                    *entry = CanaryEntry {
                        policy: policy.clone(),
                        state: CanaryState::new(),
                        last_check: Instant::now(),
                    };
                }
                let wanted = weight_for(&entry.policy, &entry.state);
                let current = endpoint
                    .variants
                    .iter()
                    .find(|v| v.name == policy.canary)
                    .map(|v| v.weight);
                if current != Some(wanted) {
                    // A reloaded route file restarts at step 0; keep the rollout where it is.
                    updates.push((name.clone(), wanted));
                }
                if entry.last_check.elapsed() < policy.interval {
                    continue;
                }
                entry.last_check = Instant::now();
                let stable = state.traffic.window(name, &policy.stable).take();
                let canary = state.traffic.window(name, &policy.canary).take();
                let decision = routing::evaluate(policy, &mut entry.state, stable, canary);
                let (label, reason) = match &decision {
                    Decision::Wait(reason) => ("wait", reason.clone()),
                    Decision::Hold(reason) => ("hold", reason.clone()),
                    Decision::StepUp(to) => {
                        ("step_up", format!("checks passed; canary weight → {to}%"))
                    }
                    Decision::Promote => ("promote", "every step passed".to_owned()),
                    Decision::Rollback(reason) => ("rollback", reason.clone()),
                };
                entry.state.last_decision = label.to_owned();
                entry.state.last_reason = reason.clone();
                state.metrics.canary_decision(name, label);
                match decision {
                    Decision::Wait(_) => {}
                    Decision::Hold(_) => {
                        warn!(endpoint = %name, %reason, "Canary check failed; holding.")
                    }
                    Decision::Rollback(_) => {
                        warn!(endpoint = %name, %reason, "Canary rolled back: all traffic to the stable variant.");
                        updates.push((name.clone(), 0.0));
                    }
                    Decision::StepUp(to) => {
                        info!(endpoint = %name, weight = to, "Canary stepped up.");
                        updates.push((name.clone(), to));
                    }
                    Decision::Promote => {
                        info!(endpoint = %name, "Canary promoted: it now takes all traffic.");
                        updates.push((name.clone(), 100.0));
                    }
                }
            }
        }
        for (endpoint, weight) in updates {
            state.set_canary_weight(&endpoint, weight).await;
        }
    }
}

/// The canary's weight for a rollout state.
fn weight_for(policy: &CanaryPolicy, state: &CanaryState) -> f64 {
    match state.phase {
        CanaryPhase::Progressing => policy.steps[state.step.min(policy.steps.len() - 1)],
        CanaryPhase::Promoted => 100.0,
        CanaryPhase::RolledBack => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentile_is_an_upper_bound_within_20_percent() {
        let w = Window::default();
        for i in 1..=1000u64 {
            w.record(true, Duration::from_micros(i * 10));
        }
        w.record(false, Duration::ZERO);
        let s = w.take();
        assert_eq!((s.ok, s.failed), (1000, 1));
        assert!(s.p99_ms >= 9.9 && s.p99_ms <= 9.9 * 1.2, "{}", s.p99_ms);
        assert_eq!(
            w.take(),
            WindowSnapshot::default(),
            "taking clears the window"
        );
    }
}
