//! The `capture:` section (a model's config.yaml, or an endpoint in
//! routes.yaml): which requests are recorded and what of them. Off unless
//! given. Validated here; the sampling counter travels with the policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

/// Records larger than this keep their metadata and drop their tensors.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Share of requests recorded, in percent (0 < p ≤ 100).
    percent: Option<f64>,
    /// Or every Nth request.
    every: Option<u64>,
    /// `both` (default), `request` or `response`.
    keep: Option<String>,
    /// Only these inputs / outputs (default: all).
    inputs: Option<Vec<String>>,
    outputs: Option<Vec<String>>,
    /// Inputs never written (their name and shape are; their data is not).
    #[serde(default)]
    redact: Vec<String>,
    max_record_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    Percent(f64),
    Every(u64),
}

#[derive(Debug, Clone)]
pub struct CapturePolicy {
    pub sample: Sample,
    pub keep_request: bool,
    pub keep_response: bool,
    pub inputs: Option<Vec<String>>,
    pub outputs: Option<Vec<String>>,
    pub redact: Vec<String>,
    pub max_record_bytes: usize,
    /// Requests seen, for `every` (shared by clones of this policy).
    seen: Arc<AtomicU64>,
}

impl PartialEq for CapturePolicy {
    fn eq(&self, other: &Self) -> bool {
        self.sample == other.sample
            && self.keep_request == other.keep_request
            && self.keep_response == other.keep_response
            && self.inputs == other.inputs
            && self.outputs == other.outputs
            && self.redact == other.redact
            && self.max_record_bytes == other.max_record_bytes
    }
}

impl CapturePolicy {
    /// Whether this request is recorded.
    pub fn sample_now(&self) -> bool {
        match self.sample {
            Sample::Percent(p) if p >= 100.0 => true,
            Sample::Percent(p) => rand::random::<f64>() * 100.0 < p,
            Sample::Every(n) => self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(n),
        }
    }

    pub fn keeps_input(&self, name: &str) -> bool {
        self.inputs
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }

    pub fn keeps_output(&self, name: &str) -> bool {
        self.outputs
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    }

    pub fn redacts(&self, name: &str) -> bool {
        self.redact.iter().any(|n| n == name)
    }
}

impl RawCapture {
    pub fn validate(self, owner: &str) -> Result<CapturePolicy, String> {
        let sample = match (self.percent, self.every) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{owner}: capture takes `percent` or `every`, not both"
                ));
            }
            (Some(p), None) if p > 0.0 && p <= 100.0 => Sample::Percent(p),
            (Some(p), None) => {
                return Err(format!(
                    "{owner}: capture.percent must be above 0 and at most 100, got {p}"
                ));
            }
            (None, Some(n)) if n >= 1 => Sample::Every(n),
            (None, Some(_)) => return Err(format!("{owner}: capture.every must be at least 1")),
            (None, None) => Sample::Percent(100.0),
        };
        let (keep_request, keep_response) = match self.keep.as_deref() {
            None | Some("both") => (true, true),
            Some("request") => (true, false),
            Some("response") => (false, true),
            Some(other) => {
                return Err(format!(
                    "{owner}: capture.keep is `both`, `request` or `response`, got `{other}`"
                ));
            }
        };
        let max_record_bytes = self.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes < 1024 {
            return Err(format!(
                "{owner}: capture.max_record_bytes must be at least 1024"
            ));
        }
        Ok(CapturePolicy {
            sample,
            keep_request,
            keep_response,
            inputs: self.inputs,
            outputs: self.outputs,
            redact: self.redact,
            max_record_bytes,
            seen: Arc::new(AtomicU64::new(0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<CapturePolicy, String> {
        serde_yaml_ng::from_str::<RawCapture>(yaml)
            .map_err(|e| e.to_string())?
            .validate("model `m`")
    }

    #[test]
    fn every_nth_and_percent_and_refusals() {
        let every = policy("every: 3").unwrap();
        let hits: Vec<bool> = (0..7).map(|_| every.sample_now()).collect();
        assert_eq!(hits, [true, false, false, true, false, false, true]);
        let all = policy("{}").unwrap();
        assert!((0..100).all(|_| all.sample_now()));
        let some = policy("percent: 10").unwrap();
        let n = (0..20_000).filter(|_| some.sample_now()).count();
        assert!((1_600..2_400).contains(&n), "{n}");
        for (bad, needle) in [
            ("percent: 0", "above 0"),
            ("percent: 101", "at most 100"),
            ("every: 0", "at least 1"),
            ("{percent: 5, every: 2}", "not both"),
            ("keep: all", "`both`"),
            ("max_record_bytes: 10", "1024"),
            ("sample: 5", "unknown field"),
        ] {
            let err = policy(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let narrow = policy("{keep: request, inputs: [a], redact: [b]}").unwrap();
        assert!(narrow.keep_request && !narrow.keep_response);
        assert!(narrow.keeps_input("a") && !narrow.keeps_input("c") && narrow.redacts("b"));
    }
}
