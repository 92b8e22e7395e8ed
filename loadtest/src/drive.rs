//! Request scheduling: closed loop (N workers, each sends when its last reply
//! came) and open loop (a fixed arrival rate; latency counts from the
//! *scheduled* send time, so queueing in the client or server is not hidden:
//! no coordinated omission). Both are bounded by time and/or count.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::stats::Recorder;

/// Something that sends one request and says how it went (`Err` = error kind).
pub trait Target: Send + Sync + 'static {
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// When a run stops. At least one of `duration`/`requests` must be set.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Requests started before this much time has passed are not recorded.
    pub warmup: Duration,
    /// Length of the measured phase.
    pub duration: Option<Duration>,
    /// Number of measured requests.
    pub requests: Option<u64>,
}

impl Bounds {
    pub fn check(&self) -> Result<(), String> {
        if self.duration.is_none() && self.requests.is_none() {
            return Err("refusing an unbounded run: give --duration and/or --requests".to_owned());
        }
        if self.duration.is_some_and(|d| d.is_zero()) || self.requests == Some(0) {
            return Err("--duration and --requests must be positive".to_owned());
        }
        Ok(())
    }
}

/// Called after every measured request, for progress bars.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

pub struct RunResult {
    pub recorder: Recorder,
    /// Length of the measured phase as it really ran.
    pub elapsed: Duration,
}

struct Shared {
    start: Instant,
    measure_start: Instant,
    end: Option<Instant>,
    requests: Option<u64>,
    claimed: AtomicU64,
    done: AtomicU64,
    progress: Option<Progress>,
    /// The run's per-second outcomes, shared by every worker's recorder.
    timeline: crate::stats::Timeline,
}

impl Shared {
    fn new(bounds: &Bounds, progress: Option<Progress>) -> Self {
        let start = Instant::now();
        let measure_start = start + bounds.warmup;
        Shared {
            start,
            measure_start,
            end: bounds.duration.map(|d| measure_start + d),
            requests: bounds.requests,
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            progress,
            timeline: crate::stats::Timeline::default(),
        }
    }

    /// Whether a request due at `at` is measured, and whether the run is over.
    fn claim(&self, at: Instant) -> Claim {
        if self.end.is_some_and(|end| at >= end) {
            return Claim::Stop;
        }
        if at < self.measure_start {
            return Claim::Warmup;
        }
        let n = self.claimed.fetch_add(1, Ordering::Relaxed);
        if self.requests.is_some_and(|limit| n >= limit) {
            return Claim::Stop;
        }
        Claim::Measured
    }

    fn finished(&self) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(progress) = &self.progress {
            progress(n);
        }
    }
}

enum Claim {
    Warmup,
    Measured,
    Stop,
}

fn record(
    recorder: &mut Recorder,
    shared: &Shared,
    result: Result<(), String>,
    scheduled: Instant,
) {
    let now = Instant::now();
    let offset = now.saturating_duration_since(shared.measure_start);
    match result {
        Ok(()) => recorder.ok(now - scheduled, offset),
        Err(kind) => recorder.error(&kind, now - scheduled, offset),
    }
    shared.finished();
}

/// `concurrency` workers, each sending its next request as soon as the last one is answered.
pub async fn closed_loop<T: Target>(
    target: Arc<T>,
    concurrency: usize,
    bounds: Bounds,
    progress: Option<Progress>,
) -> RunResult {
    let shared = Arc::new(Shared::new(&bounds, progress));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let target = target.clone();
        let shared = shared.clone();
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::sharing(&shared.timeline);
            loop {
                let sent = Instant::now();
                match shared.claim(sent) {
                    Claim::Stop => break,
                    Claim::Warmup => {
                        let _ = target.send().await;
                    }
                    Claim::Measured => {
                        let result = target.send().await;
                        record(&mut recorder, &shared, result, sent);
                    }
                }
            }
            recorder
        }));
    }
    let mut recorder = Recorder::sharing(&shared.timeline);
    for worker in workers {
        if let Ok(part) = worker.await {
            recorder.merge(&part);
        }
    }
    RunResult {
        recorder,
        elapsed: Instant::now().saturating_duration_since(shared.measure_start),
    }
}

/// The send time of request `index` at `rate` per second, without drift.
pub fn scheduled_at(start: Instant, rate: f64, index: u64) -> Instant {
    start + Duration::from_secs_f64(index as f64 / rate)
}

/// Requests arrive at `rate` per second whatever the server does; at most
/// `max_in_flight` are outstanding (later ones wait, and that wait counts).
pub async fn open_loop<T: Target>(
    target: Arc<T>,
    rate: f64,
    max_in_flight: usize,
    bounds: Bounds,
    progress: Option<Progress>,
) -> RunResult {
    let shared = Arc::new(Shared::new(&bounds, progress));
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut index = 0u64;
    loop {
        let due = scheduled_at(shared.start, rate, index);
        index += 1;
        let measured = match shared.claim(due) {
            Claim::Stop => break,
            Claim::Warmup => false,
            Claim::Measured => true,
        };
        tokio::time::sleep_until(due).await;
        let target = target.clone();
        let shared = shared.clone();
        let permits = permits.clone();
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let result = target.send().await;
            if measured {
                record(&mut *recorder.lock().await, &shared, result, due);
            }
        });
        // Reap finished tasks so a long run does not hold every handle.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let recorder = recorder.lock().await.clone();
    RunResult {
        recorder,
        elapsed: Instant::now().saturating_duration_since(shared.measure_start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that takes `service` per request, one at a time when `serial`.
    struct FakeServer {
        service: Duration,
        serial: Option<Mutex<()>>,
    }

    impl Target for FakeServer {
        async fn send(&self) -> Result<(), String> {
            let _guard = match &self.serial {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            tokio::time::sleep(self.service).await;
            Ok(())
        }
    }

    fn server(ms: u64, serial: bool) -> Arc<FakeServer> {
        Arc::new(FakeServer {
            service: Duration::from_millis(ms),
            serial: serial.then(|| Mutex::new(())),
        })
    }

    #[test]
    fn schedule_has_no_drift() {
        let start = Instant::now();
        let late = scheduled_at(start, 3.0, 3_000_000) - start;
        assert_eq!(late, Duration::from_secs(1_000_000));
        assert_eq!(
            scheduled_at(start, 1000.0, 1) - start,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn unbounded_runs_are_refused() {
        let b = Bounds {
            warmup: Duration::ZERO,
            duration: None,
            requests: None,
        };
        assert!(b.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_stops_at_the_request_count() {
        let bounds = Bounds {
            warmup: Duration::from_millis(100),
            duration: None,
            requests: Some(50),
        };
        let run = closed_loop(server(10, false), 4, bounds, None).await;
        assert_eq!(run.recorder.ok_count(), 50);
        assert!((run.recorder.quantile_ms(0.5) - 10.0).abs() < 0.1);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_throughput_follows_service_time() {
        let bounds = Bounds {
            warmup: Duration::ZERO,
            duration: Some(Duration::from_secs(1)),
            requests: None,
        };
        let run = closed_loop(server(10, false), 2, bounds, None).await;
        // 2 workers × 100 per second.
        assert!(
            (199..=201).contains(&run.recorder.ok_count()),
            "{}",
            run.recorder.ok_count()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_at_the_rate_regardless_of_latency() {
        let bounds = Bounds {
            warmup: Duration::ZERO,
            duration: Some(Duration::from_secs(1)),
            requests: None,
        };
        let run = open_loop(server(50, false), 200.0, 10_000, bounds, None).await;
        assert_eq!(run.recorder.ok_count(), 200);
        assert!((run.recorder.quantile_ms(0.99) - 50.0).abs() < 0.1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_queueing_from_the_scheduled_time() {
        // The server serves one request per 10 ms, but 200/s arrive: each one
        // waits behind the last. A closed loop would report 10 ms; the truth
        // grows to ~5 ms × 99 extra over the second's second half.
        let bounds = Bounds {
            warmup: Duration::ZERO,
            duration: None,
            requests: Some(100),
        };
        let run = open_loop(server(10, true), 200.0, 10_000, bounds, None).await;
        assert_eq!(run.recorder.ok_count(), 100);
        let p50 = run.recorder.quantile_ms(0.5);
        let max = run.recorder.summary(run.elapsed, 0.0).latency_ms.max;
        assert!(p50 > 200.0, "p50 {p50}");
        // Request 99 was due at 495 ms and done at 1000 ms.
        assert!((max - 505.0).abs() < 2.0, "max {max}");
    }
}
