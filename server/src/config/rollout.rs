//! A model's rollout policy (`rollout:` in its `config.yaml`): how a new
//! version that arrives from any source earns its traffic — an optional
//! shadow phase judged on output agreement, then canary steps judged on
//! success rate and latency, then promotion (the previous version stays
//! loaded for `keep_previous`) or rollback. Without one, a new version
//! replaces the old as soon as it is warm.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::routes::{CanaryPolicy, RawTolerance, Tolerance, humantime_serde_compat};

/// Variant names a model rollout routes between (pin one with the override header).
pub const STABLE: &str = "stable";
pub const CANDIDATE: &str = "candidate";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    shadow: Option<RawShadowGate>,
    canary: RawCanarySteps,
    #[serde(default, with = "optional_duration")]
    keep_previous: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadowGate {
    percent: f64,
    #[serde(with = "humantime_serde_compat")]
    interval: Duration,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
    tolerance: Option<RawTolerance>,
    #[serde(default = "default_min_agreement")]
    min_agreement: f64,
    max_abs_difference: Option<f64>,
    max_mean_abs_difference: Option<f64>,
    min_argmax_agreement: Option<f64>,
    #[serde(default = "default_min_success")]
    min_success_rate: f64,
    #[serde(default = "default_failures")]
    failures_to_rollback: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanarySteps {
    steps: Vec<f64>,
    #[serde(with = "humantime_serde_compat")]
    interval: Duration,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
    #[serde(default = "default_min_success")]
    min_success_rate: f64,
    max_p99_ms: Option<f64>,
    max_p99_ratio: Option<f64>,
    #[serde(default = "default_failures")]
    failures_to_rollback: u32,
}

fn default_min_requests() -> u64 {
    100
}
fn default_min_success() -> f64 {
    99.0
}
fn default_min_agreement() -> f64 {
    99.0
}
fn default_failures() -> u32 {
    1
}

mod optional_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("keep_previous `{text}`: {e}")))
    }
}

/// The shadow phase: a share of live requests is copied to the candidate and
/// its answers are compared with the stable version's to the same request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowGate {
    /// Share of requests copied, 0–100.
    pub percent: f64,
    pub interval: Duration,
    /// Shadow answers an interval needs before it is judged.
    pub min_requests: u64,
    /// When two floats agree: |a − b| ≤ abs + rel × |a| (integers, booleans
    /// and strings only when equal).
    pub tolerance: Tolerance,
    /// Percent of compared requests whose every output agrees.
    pub min_agreement: f64,
    /// Largest |stable − candidate| allowed in any float output.
    pub max_abs_difference: Option<f64>,
    /// Largest mean |stable − candidate| allowed, per output.
    pub max_mean_abs_difference: Option<f64>,
    /// Percent of rows whose argmax (class) must be the same, per output.
    pub min_argmax_agreement: Option<f64>,
    /// The candidate's own success rate on the copies, percent.
    pub min_success_rate: f64,
    pub failures_to_rollback: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutPolicy {
    pub shadow: Option<ShadowGate>,
    /// Variants are `stable` and `candidate`.
    pub canary: CanaryPolicy,
    /// How long the previous stable version stays loaded after a promotion
    /// (for an instant rollback by pinning it).
    pub keep_previous: Duration,
}

/// The default `keep_previous`.
const KEEP_PREVIOUS: Duration = Duration::from_secs(600);

impl RawRollout {
    pub(crate) fn validate(self) -> Result<RolloutPolicy, String> {
        let owner = "rollout";
        let c = self.canary;
        let canary = CanaryPolicy {
            stable: STABLE.to_owned(),
            canary: CANDIDATE.to_owned(),
            steps: c.steps,
            interval: c.interval,
            min_requests: c.min_requests,
            min_success_rate: c.min_success_rate,
            max_p99_ms: c.max_p99_ms,
            max_p99_ratio: c.max_p99_ratio,
            failures_to_rollback: c.failures_to_rollback.max(1),
        };
        canary.check(owner)?;
        let shadow = match self.shadow {
            None => None,
            Some(s) => {
                if !(s.percent > 0.0 && s.percent <= 100.0) {
                    return Err(format!(
                        "{owner}: shadow percent must be in (0, 100], got {}",
                        s.percent
                    ));
                }
                if s.interval < Duration::from_millis(10) {
                    return Err(format!("{owner}: shadow interval must be at least 10ms"));
                }
                for (name, value) in [
                    ("min_agreement", Some(s.min_agreement)),
                    ("min_success_rate", Some(s.min_success_rate)),
                    ("min_argmax_agreement", s.min_argmax_agreement),
                ] {
                    if value.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
                        return Err(format!("{owner}: shadow {name} is a percentage"));
                    }
                }
                for (name, value) in [
                    ("max_abs_difference", s.max_abs_difference),
                    ("max_mean_abs_difference", s.max_mean_abs_difference),
                ] {
                    if value.is_some_and(|v| v.is_nan() || v < 0.0) {
                        return Err(format!("{owner}: shadow {name} is a non-negative number"));
                    }
                }
                Some(ShadowGate {
                    percent: s.percent,
                    interval: s.interval,
                    min_requests: s.min_requests.max(1),
                    tolerance: Tolerance::from_raw(s.tolerance, "rollout shadow")?,
                    min_agreement: s.min_agreement,
                    max_abs_difference: s.max_abs_difference,
                    max_mean_abs_difference: s.max_mean_abs_difference,
                    min_argmax_agreement: s.min_argmax_agreement,
                    min_success_rate: s.min_success_rate,
                    failures_to_rollback: s.failures_to_rollback.max(1),
                })
            }
        };
        Ok(RolloutPolicy {
            shadow,
            canary,
            keep_previous: self.keep_previous.unwrap_or(KEEP_PREVIOUS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RolloutPolicy, String> {
        let raw: RawRollout = crate::config::file::parse_yaml(text)?;
        raw.validate()
    }

    #[test]
    fn a_policy_parses_with_defaults() {
        let policy = parse(
            "shadow: {percent: 10, interval: 5s, tolerance: {abs: 0.001}, min_argmax_agreement: 99.5}\n\
             canary: {steps: [10, 50, 100], interval: 5s, max_p99_ratio: 1.5}\n",
        )
        .unwrap();
        let shadow = policy.shadow.unwrap();
        assert_eq!(shadow.tolerance.abs, 0.001);
        assert_eq!(shadow.tolerance.rel, Tolerance::default().rel);
        assert_eq!(shadow.min_agreement, 99.0);
        assert_eq!(policy.canary.canary, CANDIDATE);
        assert_eq!(policy.keep_previous, KEEP_PREVIOUS);
    }

    #[test]
    fn mistakes_are_refused_with_reasons() {
        for (text, expected) in [
            (
                "canary: {steps: [50, 10], interval: 1s}",
                "must rise strictly",
            ),
            (
                "shadow: {percent: 0, interval: 1s}\ncanary: {steps: [100], interval: 1s}",
                "shadow percent",
            ),
            (
                "shadow: {percent: 5, interval: 1s, min_agreement: 101}\ncanary: {steps: [100], interval: 1s}",
                "min_agreement is a percentage",
            ),
            (
                "canary: {steps: [100], interval: 1s, max_p99_ratio: 1.01}",
                "finer than the latency windows",
            ),
            (
                "shadow: {percent: 5, interval: 1s}",
                "missing field `canary`",
            ),
            (
                "canary: {steps: [100], interval: 1s}\nkeep_previous: soon",
                "keep_previous",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
