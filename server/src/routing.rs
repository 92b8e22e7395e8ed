//! Traffic routing: endpoints (virtual model names) with weighted variants,
//! pinned-variant overrides, sticky keys, shadow copies, and the canary
//! policy's decision rule. The route file (`routes.yaml`) is parsed into raw
//! types and validated against the models it names; only a validated
//! `RouteTable` travels, inside the catalog snapshot, so routes and the models
//! they point at change together.
//!
//! Sticky keys use weighted rendezvous hashing: each (key, variant) pair gets
//! a score `-weight / ln(u)` with `u` from the hash, and the highest wins. A
//! key stays on its variant while weights are unchanged, and when weights
//! change only the keys that must move do.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Header that pins a variant when an endpoint names none of its own.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-switchyard-variant";

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
mod humantime_serde_compat {
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub name: String,
    pub variants: Vec<Variant>,
    pub sticky: Option<StickyKey>,
    pub override_header: String,
    pub shadow: Option<Shadow>,
    pub canary: Option<CanaryPolicy>,
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
    let raw: RawRoutes = crate::config_file::parse_yaml(text)?;
    let mut endpoints = BTreeMap::new();
    for (name, endpoint) in raw.endpoints {
        if !crate::repository::valid_model_name(&name) {
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
                if c.steps.is_empty()
                    || c.steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0))
                    || c.steps.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(format!(
                        "{owner}: canary steps must rise strictly within (0, 100], got {:?}",
                        c.steps
                    ));
                }
                if c.interval < Duration::from_millis(10) {
                    return Err(format!("{owner}: canary interval must be at least 10ms"));
                }
                if !(0.0..=100.0).contains(&c.min_success_rate) {
                    return Err(format!("{owner}: min_success_rate is a percentage"));
                }
                Some(CanaryPolicy {
                    stable: c.stable,
                    canary: c.canary,
                    steps: c.steps,
                    interval: c.interval,
                    min_requests: c.min_requests,
                    min_success_rate: c.min_success_rate,
                    max_p99_ms: c.max_p99_ms,
                    max_p99_ratio: c.max_p99_ratio,
                    failures_to_rollback: c.failures_to_rollback.max(1),
                })
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
                Some(Shadow {
                    target: s.target.validate(&format!("{owner}, shadow"), models)?,
                    percent: s.percent,
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

fn unit_hash(key: &str, variant: &str) -> f64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    variant.hash(&mut hasher);
    // (0, 1): never 0 (ln 0) nor 1 (score ∞).
    ((hasher.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Picks a variant: the pinned one, else by sticky key (rendezvous hashing),
/// else by weight with `random` in [0, 1). Only `ready` variants are chosen.
pub fn choose(
    endpoint: &Endpoint,
    ready: &[bool],
    pinned: Option<&str>,
    sticky_key: Option<&str>,
    random: f64,
) -> Result<usize, ApiError> {
    if let Some(name) = pinned {
        let index = endpoint
            .variants
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = endpoint.variants.iter().map(|v| v.name.as_str()).collect();
                ApiError::invalid(format!(
                    "endpoint `{}` has no variant `{name}` (header {}); variants: {names:?}",
                    endpoint.name, endpoint.override_header
                ))
            })?;
        if !ready.get(index).copied().unwrap_or(false) {
            return Err(ApiError::unavailable(format!(
                "variant `{name}` of endpoint `{}` is not ready",
                endpoint.name
            )));
        }
        return Ok(index);
    }
    let candidates: Vec<usize> = (0..endpoint.variants.len())
        .filter(|&i| ready.get(i).copied().unwrap_or(false) && endpoint.variants[i].weight > 0.0)
        .collect();
    if candidates.is_empty() {
        return Err(ApiError::unavailable(format!(
            "endpoint `{}` has no ready variant with traffic",
            endpoint.name
        )));
    }
    if let Some(key) = sticky_key {
        let best = candidates.iter().copied().max_by(|&a, &b| {
            let score = |i: usize| {
                -endpoint.variants[i].weight / unit_hash(key, &endpoint.variants[i].name).ln()
            };
            score(a).total_cmp(&score(b))
        });
        return best.ok_or_else(|| ApiError::internal("no variant"));
    }
    let total: f64 = candidates
        .iter()
        .map(|&i| endpoint.variants[i].weight)
        .sum();
    let mut point = random.clamp(0.0, 1.0 - f64::EPSILON) * total;
    for &i in &candidates {
        point -= endpoint.variants[i].weight;
        if point < 0.0 {
            return Ok(i);
        }
    }
    Ok(candidates[candidates.len() - 1])
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

/// Where a canary rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryPhase {
    Progressing,
    Promoted,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryState {
    pub phase: CanaryPhase,
    /// Index into the policy's steps.
    pub step: usize,
    pub failed_checks: u32,
    pub last_decision: String,
    pub last_reason: String,
    pub last_canary: WindowSnapshot,
    pub last_stable: WindowSnapshot,
}

impl CanaryState {
    pub fn new() -> Self {
        CanaryState {
            phase: CanaryPhase::Progressing,
            step: 0,
            failed_checks: 0,
            last_decision: "started".to_owned(),
            last_reason: String::new(),
            last_canary: WindowSnapshot::default(),
            last_stable: WindowSnapshot::default(),
        }
    }
}

impl Default for CanaryState {
    fn default() -> Self {
        Self::new()
    }
}

/// What one interval's check decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not enough canary traffic to judge; nothing changes.
    Wait(String),
    /// Checks failed, but not often enough yet to roll back.
    Hold(String),
    StepUp(f64),
    Promote,
    Rollback(String),
}

/// The canary rule: judge the canary against the policy (and the stable's
/// p99 when a ratio is set), step up on success, roll back after
/// `failures_to_rollback` failed checks in a row.
pub fn evaluate(
    policy: &CanaryPolicy,
    state: &mut CanaryState,
    stable: WindowSnapshot,
    canary: WindowSnapshot,
) -> Decision {
    state.last_canary = canary;
    state.last_stable = stable;
    if state.phase != CanaryPhase::Progressing {
        return Decision::Wait(format!("rollout already {:?}", state.phase));
    }
    if canary.total() < policy.min_requests {
        return Decision::Wait(format!(
            "canary saw {} requests this interval; {} needed to judge",
            canary.total(),
            policy.min_requests
        ));
    }
    let mut problems = Vec::new();
    if canary.success_rate() < policy.min_success_rate {
        problems.push(format!(
            "success rate {:.2}% < {:.2}%",
            canary.success_rate(),
            policy.min_success_rate
        ));
    }
    if let Some(max) = policy.max_p99_ms
        && canary.p99_ms > max
    {
        problems.push(format!("p99 {:.2} ms > {max:.2} ms", canary.p99_ms));
    }
    if let Some(ratio) = policy.max_p99_ratio
        && stable.total() > 0
        && canary.p99_ms > ratio * stable.p99_ms
    {
        problems.push(format!(
            "p99 {:.2} ms > {ratio} × stable's {:.2} ms",
            canary.p99_ms, stable.p99_ms
        ));
    }
    if !problems.is_empty() {
        state.failed_checks += 1;
        let reason = problems.join("; ");
        if state.failed_checks >= policy.failures_to_rollback {
            state.phase = CanaryPhase::RolledBack;
            return Decision::Rollback(reason);
        }
        return Decision::Hold(reason);
    }
    state.failed_checks = 0;
    if state.step + 1 >= policy.steps.len() {
        state.phase = CanaryPhase::Promoted;
        return Decision::Promote;
    }
    state.step += 1;
    Decision::StepUp(policy.steps[state.step])
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

    #[test]
    fn weighted_split_is_accurate() {
        let table = parse(ROUTES, &models()).unwrap();
        let e = &table.endpoints["scoring"];
        let mut canary = 0;
        for i in 0..10_000 {
            // A low-discrepancy sequence stands in for the random numbers.
            let r = (i as f64 * 0.618_033_988_75).fract();
            if choose(e, &[true, true], None, None, r).unwrap() == 1 {
                canary += 1;
            }
        }
        // The sequence is evenly spread, so the split is exact to a few requests:
        // a weight off by a tenth of itself (11% or 9%) cannot pass.
        assert!(
            (990..=1010).contains(&canary),
            "{canary} of 10000 went to the 10% canary"
        );
    }

    #[test]
    fn sticky_keys_stay_put_and_move_minimally() {
        let table = parse(ROUTES, &models()).unwrap();
        let mut e = (*table.endpoints["scoring"]).clone();
        // 20,000 keys: the hash's spread is ±0.2% (one sd), so ±0.7% still
        // refuses a weight off by a tenth of itself.
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| choose(&e, &[true, true], None, Some(k), 0.0).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| choose(&e, &[true, true], None, Some(k), 0.9).unwrap())
            .collect();
        assert_eq!(before, again, "same key, same variant");
        let share = before.iter().filter(|&&v| v == 1).count() as f64 / keys.len() as f64;
        assert!((0.093..0.107).contains(&share), "{share}");
        // 10% → 30%: only keys moving to the canary change, about 20% of them.
        e.variants[0].weight = 70.0;
        e.variants[1].weight = 30.0;
        let after: Vec<usize> = keys
            .iter()
            .map(|k| choose(&e, &[true, true], None, Some(k), 0.0).unwrap())
            .collect();
        let moved_back = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b == 1 && **a == 0)
            .count();
        let moved =
            before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / keys.len() as f64;
        assert_eq!(moved_back, 0, "no key leaves the variant whose weight grew");
        assert!((0.19..0.21).contains(&moved), "{moved}");
    }

    #[test]
    fn pins_and_readiness() {
        let table = parse(ROUTES, &models()).unwrap();
        let e = &table.endpoints["scoring"];
        assert_eq!(
            choose(e, &[true, true], Some("canary"), None, 0.0).unwrap(),
            1
        );
        assert!(
            choose(e, &[true, true], Some("nope"), None, 0.0)
                .unwrap_err()
                .message
                .contains("no variant `nope`")
        );
        assert_eq!(
            choose(e, &[true, false], Some("canary"), None, 0.0)
                .unwrap_err()
                .kind,
            crate::error::ErrorKind::Unavailable
        );
        // An unready canary gets nothing; the stable takes everything.
        for i in 0..100 {
            assert_eq!(
                choose(e, &[true, false], None, None, i as f64 / 100.0).unwrap(),
                0
            );
        }
        assert!(choose(e, &[false, false], None, None, 0.5).is_err());
    }

    fn policy() -> CanaryPolicy {
        CanaryPolicy {
            stable: "stable".into(),
            canary: "canary".into(),
            steps: vec![10.0, 50.0, 100.0],
            interval: Duration::from_secs(1),
            min_requests: 20,
            min_success_rate: 99.0,
            max_p99_ms: None,
            max_p99_ratio: Some(2.0),
            failures_to_rollback: 2,
        }
    }

    fn window(ok: u64, failed: u64, p99: f64) -> WindowSnapshot {
        WindowSnapshot {
            ok,
            failed,
            p99_ms: p99,
        }
    }

    #[test]
    fn a_healthy_canary_is_promoted_step_by_step() {
        let p = policy();
        let mut s = CanaryState::new();
        let stable = window(900, 0, 1.0);
        assert!(matches!(
            evaluate(&p, &mut s, stable, window(5, 0, 1.0)),
            Decision::Wait(_)
        ));
        assert_eq!(
            evaluate(&p, &mut s, stable, window(100, 0, 1.2)),
            Decision::StepUp(50.0)
        );
        assert_eq!(
            evaluate(&p, &mut s, stable, window(500, 0, 1.2)),
            Decision::StepUp(100.0)
        );
        assert_eq!(
            evaluate(&p, &mut s, stable, window(900, 0, 1.2)),
            Decision::Promote
        );
        assert_eq!(s.phase, CanaryPhase::Promoted);
    }

    #[test]
    fn a_failing_or_slow_canary_is_rolled_back_after_repeated_failures() {
        let p = policy();
        let mut s = CanaryState::new();
        let stable = window(900, 0, 1.0);
        assert!(
            matches!(evaluate(&p, &mut s, stable, window(90, 10, 1.0)), Decision::Hold(r) if r.contains("success rate"))
        );
        assert!(
            matches!(evaluate(&p, &mut s, stable, window(100, 0, 5.0)), Decision::Rollback(r) if r.contains("p99"))
        );
        assert_eq!(s.phase, CanaryPhase::RolledBack);
        // A pass in between resets the count.
        let mut s = CanaryState::new();
        assert!(matches!(
            evaluate(&p, &mut s, stable, window(90, 10, 1.0)),
            Decision::Hold(_)
        ));
        assert_eq!(
            evaluate(&p, &mut s, stable, window(100, 0, 1.0)),
            Decision::StepUp(50.0)
        );
        assert!(matches!(
            evaluate(&p, &mut s, stable, window(90, 10, 1.0)),
            Decision::Hold(_)
        ));
    }
}
