//! Latency and outcome recording: an HDR histogram for the whole run plus
//! one per second (for throughput and latency over time), errors by kind.
//!
//! Memory is bounded: each recorder (one per worker) keeps its whole-run
//! histograms (3 significant figures, ~140 KB each) and only the second it is
//! in; when a second ends it is merged into the run's one shared timeline,
//! whose per-second histograms keep 2 significant figures (~20 KB a second).
//! So a run costs about 0.3 MB per worker plus 20 KB per measured second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track: 60 s, in microseconds.
const MAX_MICROS: u64 = 60_000_000;

#[allow(clippy::expect_used)] // Constant bounds that hdrhistogram accepts; checked by every test.
fn histogram() -> Histogram<u64> {
    // 3 significant figures: 0.1% error at any magnitude.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

#[allow(clippy::expect_used)] // Constant bounds, as above.
fn second_histogram() -> Histogram<u64> {
    // 2 significant figures: 1%, plenty for a per-second p50/p99 line.
    Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid histogram bounds")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MICROS)
}

#[derive(Debug, Clone)]
pub struct Second {
    ok: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            ok: 0,
            errors: 0,
            latency: second_histogram(),
        }
    }
}

impl Second {
    fn add(&mut self, other: &Second) {
        self.ok += other.ok;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }
}

/// A run's seconds, shared by its recorders.
pub type Timeline = Arc<Mutex<Vec<Second>>>;

fn add_second(timeline: &Timeline, index: usize, second: &Second) {
    if let Ok(mut seconds) = timeline.lock() {
        if seconds.len() <= index {
            seconds.resize_with(index + 1, Second::default);
        }
        seconds[index].add(second);
    }
}

/// Outcomes of the measured requests.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency: Histogram<u64>,
    /// How fast failures come back (a refusal should be quick).
    error_latency: Histogram<u64>,
    /// The second this recorder is in, not yet merged into the timeline.
    current: Option<(usize, Second)>,
    timeline: Timeline,
    errors: BTreeMap<String, u64>,
    ok: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::sharing(&Timeline::default())
    }
}

impl Recorder {
    /// A recorder that adds its seconds to `timeline` (one per run).
    pub fn sharing(timeline: &Timeline) -> Self {
        Recorder {
            latency: histogram(),
            error_latency: histogram(),
            current: None,
            timeline: timeline.clone(),
            errors: BTreeMap::new(),
            ok: 0,
        }
    }

    fn second(&mut self, offset: Duration) -> &mut Second {
        let index = usize::try_from(offset.as_secs())
            .unwrap_or(usize::MAX)
            .min(86_400);
        if self.current.as_ref().is_some_and(|(at, _)| *at != index) {
            self.flush();
        }
        &mut self
            .current
            .get_or_insert_with(|| (index, Second::default()))
            .1
    }

    /// Hands the current second to the timeline.
    fn flush(&mut self) {
        if let Some((index, second)) = self.current.take() {
            add_second(&self.timeline, index, &second);
        }
    }

    /// A successful request; `offset` is when it completed, from the start of measurement.
    pub fn ok(&mut self, latency: Duration, offset: Duration) {
        let us = micros(latency);
        // Values are clamped into the histogram's range, so recording cannot fail.
        let _ = self.latency.record(us);
        let second = self.second(offset);
        second.ok += 1;
        let _ = second.latency.record(us);
        self.ok += 1;
    }

    pub fn error(&mut self, kind: &str, latency: Duration, offset: Duration) {
        let _ = self.error_latency.record(micros(latency));
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        self.second(offset).errors += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        let _ = self.error_latency.add(&other.error_latency);
        if !Arc::ptr_eq(&self.timeline, &other.timeline) {
            let theirs = other.timeline.lock().map(|s| s.clone()).unwrap_or_default();
            for (index, second) in theirs.iter().enumerate() {
                add_second(&self.timeline, index, second);
            }
        }
        if let Some((index, second)) = &other.current {
            add_second(&self.timeline, *index, second);
        }
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        self.ok += other.ok;
    }

    pub fn ok_count(&self) -> u64 {
        self.ok
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The timeline so far, with this recorder's current second in it.
    fn seconds(&self) -> Vec<Second> {
        let mut seconds = self.timeline.lock().map(|s| s.clone()).unwrap_or_default();
        if let Some((index, second)) = &self.current {
            if seconds.len() <= *index {
                seconds.resize_with(index + 1, Second::default);
            }
            seconds[*index].add(second);
        }
        seconds
    }

    pub fn summary(&self, elapsed: Duration, client_cpu_seconds: f64) -> Summary {
        let total = self.ok + self.error_count();
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            requests: total,
            ok: self.ok,
            errors: self.error_count(),
            errors_by_kind: self.errors.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            throughput_rps: self.ok as f64 / secs,
            latency_ms: Percentiles {
                p50: self.quantile_ms(0.50),
                p90: self.quantile_ms(0.90),
                p99: self.quantile_ms(0.99),
                p999: self.quantile_ms(0.999),
                max: if self.latency.is_empty() {
                    0.0
                } else {
                    self.latency.max() as f64 / 1000.0
                },
                mean: if self.latency.is_empty() {
                    0.0
                } else {
                    self.latency.mean() / 1000.0
                },
            },
            error_latency_ms: ErrorLatency {
                p50: quantile_ms(&self.error_latency, 0.5),
                p99: quantile_ms(&self.error_latency, 0.99),
                max: quantile_ms(&self.error_latency, 1.0),
            },
            client_cpu_s: client_cpu_seconds,
            client_cpu_us_per_request: if total == 0 {
                0.0
            } else {
                client_cpu_seconds * 1e6 / total as f64
            },
            timeline: self
                .seconds()
                .iter()
                .enumerate()
                .map(|(second, s)| TimelinePoint {
                    second: second as u64,
                    ok: s.ok,
                    errors: s.errors,
                    p50_ms: if s.latency.is_empty() {
                        0.0
                    } else {
                        s.latency.value_at_quantile(0.5) as f64 / 1000.0
                    },
                    p99_ms: if s.latency.is_empty() {
                        0.0
                    } else {
                        s.latency.value_at_quantile(0.99) as f64 / 1000.0
                    },
                })
                .collect(),
            distribution: [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
                .iter()
                .map(|&q| (q, self.quantile_ms(q)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Latency of failed requests (time to the error answer).
#[derive(Debug, Clone, Serialize)]
pub struct ErrorLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What a run measured; `--json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub latency_ms: Percentiles,
    pub error_latency_ms: ErrorLatency,
    pub client_cpu_s: f64,
    pub client_cpu_us_per_request: f64,
    pub timeline: Vec<TimelinePoint>,
    /// (quantile, latency ms) pairs for plotting.
    pub distribution: Vec<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::default();
        for ms in 1..=1000u64 {
            r.ok(Duration::from_millis(ms), Duration::ZERO);
        }
        // Within HDR's 0.1% precision.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(r.quantile_ms(0.5), 500.0), "{}", r.quantile_ms(0.5));
        assert!(close(r.quantile_ms(0.99), 990.0), "{}", r.quantile_ms(0.99));
        assert!(
            close(r.quantile_ms(0.999), 999.0),
            "{}",
            r.quantile_ms(0.999)
        );
        let s = r.summary(Duration::from_secs(10), 0.5);
        assert!(close(s.latency_ms.max, 1000.0));
        assert!(close(s.latency_ms.mean, 500.5));
        assert_eq!(s.throughput_rps, 100.0);
        assert_eq!(s.client_cpu_us_per_request, 500.0);
    }

    #[test]
    fn merge_adds_counts_histograms_and_errors() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        a.ok(Duration::from_micros(100), Duration::from_millis(10));
        b.ok(Duration::from_micros(300), Duration::from_millis(1500));
        b.error(
            "http_503",
            Duration::from_micros(200),
            Duration::from_millis(1600),
        );
        a.merge(&b);
        assert_eq!(a.ok_count(), 2);
        assert_eq!(a.error_count(), 1);
        let s = a.summary(Duration::from_secs(2), 0.0);
        assert_eq!(s.errors_by_kind.get("http_503"), Some(&1));
        assert!((s.error_latency_ms.p99 - 0.2).abs() < 0.001);
        assert_eq!(s.timeline.len(), 2);
        assert_eq!(
            (s.timeline[0].ok, s.timeline[1].ok, s.timeline[1].errors),
            (1, 1, 1)
        );
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut r = Recorder::default();
        r.ok(Duration::ZERO, Duration::ZERO);
        r.ok(Duration::from_secs(3600), Duration::ZERO);
        assert_eq!(r.ok_count(), 2);
        assert!(r.quantile_ms(1.0) >= 59_000.0);
    }
}
