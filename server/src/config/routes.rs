//! The route file (`routes.yaml`): endpoints (virtual model names) with
//! weighted variants, pinned-variant overrides, sticky keys, shadow copies and
//! a canary policy. Raw serde types are validated against the models they name;
//! only a validated `RouteTable` travels, inside the catalog snapshot, so routes
//! and the models they point at change together.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Header that pins a variant when an endpoint names none of its own.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-switchyard-variant";

/// Each bucket of a canary's latency window is this much wider than the
/// one before (1%): a window's p99 is known to within one bucket.
pub const LATENCY_BUCKET_GROWTH: f64 = 1.01;
/// The smallest `max_p99_ratio` the windows can judge: two p99s of identical
/// traffic may sit a bucket apart each way (1.01² ≈ 1.02), plus a margin.
pub const MIN_P99_RATIO: f64 = 1.03;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    endpoints: BTreeMap<String, RawEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    model: String,
    version: Option<u64>,
    alias: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    #[serde(flatten)]
    target: RawTarget,
    #[serde(default)]
    weight: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSticky {
    header: Option<String>,
    parameter: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    #[serde(flatten)]
    target: RawTarget,
    percent: f64,
    tolerance: Option<RawTolerance>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTolerance {
    abs: Option<f64>,
    rel: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    stable: String,
    canary: String,
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
fn default_failures() -> u32 {
    1
}

/// `interval: 30s` in YAML, read with humantime.
pub(crate) mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    variants: Vec<RawVariant>,
    sticky: Option<RawSticky>,
    override_header: Option<String>,
    shadow: Option<RawShadow>,
    canary: Option<RawCanary>,
    capture: Option<crate::config::capture::RawCapture>,
}

/// Which version of a model a variant means.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub model: String,
    /// A fixed version, an alias (MLflow), or neither: the model's default.
    pub version: Option<u64>,
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub name: String,
    pub target: Target,
    /// Share of traffic (any positive scale; normalized when choosing).
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StickyKey {
    Header(String),
    Parameter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shadow {
    pub target: Target,
    /// Share of requests also sent to the shadow, 0–100.
    pub percent: f64,
    /// When a floating-point shadow output agrees with the stable one.
    pub tolerance: Tolerance,
    /// The traffic window its results are recorded in: the endpoint's name,
    /// or one per model rollout (a late copy of an earlier one is not judged).
    #[serde(skip)]
    pub window: String,
}

/// Two floats agree when |a − b| ≤ abs + rel × |a| (numpy's `isclose`);
/// integers, booleans and strings agree only when equal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            abs: 1e-6,
            rel: 1e-5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryPolicy {
    pub stable: String,
    pub canary: String,
    /// Canary weights in percent, ascending, the last usually 100.
    pub steps: Vec<f64>,
    pub interval: Duration,
    pub min_requests: u64,
    pub min_success_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub failures_to_rollback: u32,
}

impl CanaryPolicy {
    /// Refuses steps, intervals and gates the controller cannot judge.
    pub(crate) fn check(&self, owner: &str) -> Result<(), String> {
        if self.steps.is_empty()
            || self.steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0))
            || self.steps.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(format!(
                "{owner}: canary steps must rise strictly within (0, 100], got {:?}",
                self.steps
            ));
        }
        if self.interval < Duration::from_millis(10) {
            return Err(format!("{owner}: canary interval must be at least 10ms"));
        }
        if !(0.0..=100.0).contains(&self.min_success_rate) {
            return Err(format!("{owner}: min_success_rate is a percentage"));
        }
        if let Some(ratio) = self.max_p99_ratio
            && (ratio.is_nan() || ratio < MIN_P99_RATIO)
        {
            return Err(format!(
                "{owner}: max_p99_ratio {ratio} is finer than the latency windows resolve: each p99 is known to within {:.0}%, so identical traffic can differ by up to {:.3}×; use {MIN_P99_RATIO} or more",
                (LATENCY_BUCKET_GROWTH - 1.0) * 100.0,
                LATENCY_BUCKET_GROWTH * LATENCY_BUCKET_GROWTH
            ));
        }
        Ok(())
    }
}

impl Tolerance {
    /// A tolerance as written (either part may be left to its default).
    pub(crate) fn from_raw(raw: Option<RawTolerance>, owner: &str) -> Result<Self, String> {
        let defaults = Tolerance::default();
        let tolerance = match raw {
            None => defaults,
            Some(t) => Tolerance {
                abs: t.abs.unwrap_or(defaults.abs),
                rel: t.rel.unwrap_or(defaults.rel),
            },
        };
        if [tolerance.abs, tolerance.rel]
            .iter()
            .any(|t| t.is_nan() || *t < 0.0)
        {
            return Err(format!(
                "{owner}: tolerance `abs` and `rel` are non-negative numbers"
            ));
        }
        Ok(tolerance)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub name: String,
    pub variants: Vec<Variant>,
    pub sticky: Option<StickyKey>,
    pub override_header: String,
    pub shadow: Option<Shadow>,
    pub canary: Option<CanaryPolicy>,
    /// Which routed requests are recorded (wins over the models' own policies).
    #[serde(skip)]
    pub capture: Option<Arc<crate::config::capture::CapturePolicy>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    pub endpoints: BTreeMap<String, Arc<Endpoint>>,
}

impl RawTarget {
    fn validate(self, owner: &str, models: &BTreeSet<String>) -> Result<Target, String> {
        if !models.contains(&self.model) {
            return Err(format!(
                "{owner}: unknown model `{}`; known models: {:?}",
                self.model,
                models.iter().collect::<Vec<_>>()
            ));
        }
        if self.version.is_some() && self.alias.is_some() {
            return Err(format!("{owner}: give a version or an alias, not both"));
        }
        Ok(Target {
            model: self.model,
            version: self.version,
            alias: self.alias,
        })
    }
}

/// Parses and validates a route file against the models the sources list.
pub fn parse(text: &str, models: &BTreeSet<String>) -> Result<RouteTable, String> {
    let raw: RawRoutes = crate::config::file::parse_yaml(text)?;
    let mut endpoints = BTreeMap::new();
    for (name, endpoint) in raw.endpoints {
        if !crate::config::names::valid_model_name(&name) {
            return Err(format!(
                "endpoint `{name}`: not a valid name (letters, digits, `_`, `-`, `.`)"
            ));
        }
        if models.contains(&name) {
            return Err(format!(
                "endpoint `{name}` has the name of a model; requests could not tell them apart"
            ));
        }
        let owner = format!("endpoint `{name}`");
        if endpoint.variants.is_empty() {
            return Err(format!("{owner}: needs at least one variant"));
        }
        let mut variants = Vec::new();
        let mut names = BTreeSet::new();
        for variant in endpoint.variants {
            if !names.insert(variant.name.clone()) {
                return Err(format!(
                    "{owner}: variant `{}` is named twice",
                    variant.name
                ));
            }
            if !variant.weight.is_finite() || variant.weight < 0.0 {
                return Err(format!(
                    "{owner}: variant `{}` has weight {}; weights are ≥ 0",
                    variant.name, variant.weight
                ));
            }
            let target = variant
                .target
                .validate(&format!("{owner}, variant `{}`", variant.name), models)?;
            variants.push(Variant {
                name: variant.name,
                target,
                weight: variant.weight,
            });
        }
        let canary = match endpoint.canary {
            None => None,
            Some(c) => {
                for role in [&c.stable, &c.canary] {
                    if !names.contains(role) {
                        return Err(format!(
                            "{owner}: canary names variant `{role}`, which the endpoint does not have"
                        ));
                    }
                }
                if c.stable == c.canary {
                    return Err(format!(
                        "{owner}: canary and stable must be different variants"
                    ));
                }
                let policy = CanaryPolicy {
                    stable: c.stable,
                    canary: c.canary,
                    steps: c.steps,
                    interval: c.interval,
                    min_requests: c.min_requests,
                    min_success_rate: c.min_success_rate,
                    max_p99_ms: c.max_p99_ms,
                    max_p99_ratio: c.max_p99_ratio,
                    failures_to_rollback: c.failures_to_rollback.max(1),
                };
                policy.check(&owner)?;
                Some(policy)
            }
        };
        let total: f64 = variants.iter().map(|v| v.weight).sum();
        if canary.is_none() && total <= 0.0 {
            return Err(format!(
                "{owner}: weights add up to {total}; they must add up to a positive number"
            ));
        }
        let sticky = match endpoint.sticky {
            None => None,
            Some(RawSticky {
                header: Some(h),
                parameter: None,
            }) => Some(StickyKey::Header(h.to_ascii_lowercase())),
            Some(RawSticky {
                header: None,
                parameter: Some(p),
            }) => Some(StickyKey::Parameter(p)),
            Some(_) => return Err(format!("{owner}: sticky takes a header or a parameter")),
        };
        let shadow = match endpoint.shadow {
            None => None,
            Some(s) => {
                if !(0.0..=100.0).contains(&s.percent) {
                    return Err(format!("{owner}: shadow percent must be 0–100"));
                }
                let tolerance = Tolerance::from_raw(s.tolerance, &owner)?;
                Some(Shadow {
                    window: name.clone(),
                    target: s.target.validate(&format!("{owner}, shadow"), models)?,
                    percent: s.percent,
                    tolerance,
                })
            }
        };
        let mut endpoint = Endpoint {
            name: name.clone(),
            variants,
            sticky,
            override_header: endpoint
                .override_header
                .unwrap_or_else(|| DEFAULT_OVERRIDE_HEADER.to_owned())
                .to_ascii_lowercase(),
            shadow,
            canary,
            capture: endpoint
                .capture
                .map(|raw| raw.validate(&owner).map(Arc::new))
                .transpose()?,
        };
        if let Some(policy) = endpoint.canary.clone() {
            // A canary starts at its first step, whatever the file's weights.
            set_canary_weight(&mut endpoint, &policy, policy.steps[0]);
        }
        endpoints.insert(name, Arc::new(endpoint));
    }
    Ok(RouteTable { endpoints })
}

/// Gives the canary `percent` and the stable the rest.
pub fn set_canary_weight(endpoint: &mut Endpoint, policy: &CanaryPolicy, percent: f64) {
    for variant in &mut endpoint.variants {
        if variant.name == policy.canary {
            variant.weight = percent;
        } else if variant.name == policy.stable {
            variant.weight = 100.0 - percent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> BTreeSet<String> {
        ["fraud", "fraud-v2", "shadowy"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    const ROUTES: &str = r#"
endpoints:
  scoring:
    variants:
      - {name: stable, model: fraud, version: 1, weight: 90}
      - {name: canary, model: fraud-v2, weight: 10}
    sticky: {header: X-User}
    shadow: {model: shadowy, percent: 25}
"#;

    #[test]
    fn a_route_file_parses() {
        let table = parse(ROUTES, &models()).unwrap();
        let e = &table.endpoints["scoring"];
        assert_eq!(e.variants[0].target.version, Some(1));
        assert_eq!(e.sticky, Some(StickyKey::Header("x-user".into())));
        assert_eq!(e.override_header, DEFAULT_OVERRIDE_HEADER);
        assert_eq!(e.shadow.as_ref().unwrap().percent, 25.0);
    }

    #[test]
    fn mistakes_are_rejected_with_reasons() {
        let cases = [
            (
                "endpoints: {e: {variants: [{name: a, model: fraud, weight: 1}, {name: b, model: fraud-v2, weight: 0}], \
                 canary: {stable: a, canary: b, steps: [50, 100], interval: 1s, max_p99_ratio: 1.01}}}",
                "finer than the latency windows resolve",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: nope, weight: 1}]}}",
                "unknown model `nope`",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: fraud, weight: 0}]}}",
                "must add up to a positive number",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: fraud, weight: -1}]}}",
                "weights are ≥ 0",
            ),
            (
                "endpoints: {fraud: {variants: [{name: a, model: fraud, weight: 1}]}}",
                "name of a model",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: fraud, weight: 1}, {name: a, model: fraud, weight: 1}]}}",
                "named twice",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: fraud, wieght: 1}]}}",
                "unknown field",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: fraud, weight: 1}], canary: {stable: a, canary: b, steps: [10], interval: 1s}}}",
                "does not have",
            ),
            (
                "endpoints: {e: {variants: [{name: a, model: fraud}, {name: b, model: fraud}], canary: {stable: a, canary: b, steps: [50, 10], interval: 1s}}}",
                "must rise",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text, &models()).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
