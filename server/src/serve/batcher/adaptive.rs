//! The adaptive batching delay.

use std::time::Duration;

use tokio::time::Instant;

use super::batch::ComputeTable;

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
    pub(super) compute: ComputeTable,
}

impl Adaptive {
    pub(super) fn observe_arrivals(&mut self, now: Instant, rows: usize) {
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

    pub(super) fn compute_estimate(table: &[(usize, f64)], rows: usize) -> Option<f64> {
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

    /// Fresh, recording compute times into `compute` (shared with the request side).
    pub(super) fn with_compute(compute: ComputeTable) -> Self {
        Adaptive {
            compute,
            ..Adaptive::default()
        }
    }

    /// Without estimates yet (no arrivals or compute seen), the fixed delay applies.
    #[cfg(test)]
    pub(super) fn seeded(rate: f64, table: Vec<(usize, f64)>) -> Self {
        Adaptive {
            rate: Some(rate),
            last: None,
            compute: std::sync::Arc::new(std::sync::Mutex::new(table)),
        }
    }

    /// Extra time to wait from now (zero: send now).
    pub(super) fn delay(
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
