//! Automated canary rollouts: the rule (`evaluate`, pure and unit-tested:
//! judge one interval of the canary's outcomes against the policy and the
//! stable's, then wait, hold, step up, promote or roll back) and the
//! controller task that applies it to every endpoint with a canary policy,
//! writing new weights through the catalog store (one swap each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::routes::{CanaryPolicy, set_canary_weight};
use crate::metrics::Metrics;
use crate::serve::catalog::CatalogStore;
use crate::serve::traffic::{Traffic, WindowSnapshot};

/// Where a canary rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryPhase {
    Progressing,
    /// Stopped by an operator: weights stay as they are, nothing is judged.
    Paused,
    Promoted,
    RolledBack,
}

/// What an operator (or an external controller) asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryCommand {
    Pause,
    Resume,
    /// Roll back now: all traffic to the stable variant.
    Abort,
    /// Promote now: all traffic to the canary.
    Promote,
}

impl CanaryCommand {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pause" => Some(CanaryCommand::Pause),
            "resume" => Some(CanaryCommand::Resume),
            "abort" => Some(CanaryCommand::Abort),
            "promote" => Some(CanaryCommand::Promote),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            CanaryCommand::Pause => "pause",
            CanaryCommand::Resume => "resume",
            CanaryCommand::Abort => "abort",
            CanaryCommand::Promote => "promote",
        }
    }
}

/// Applies an operator's command to a rollout's state (pure).
pub fn command(state: &mut CanaryState, command: CanaryCommand) -> Result<(), String> {
    use CanaryPhase::*;
    let next = match (command, state.phase) {
        (CanaryCommand::Pause, Progressing) => Paused,
        (CanaryCommand::Resume, Paused) => Progressing,
        (CanaryCommand::Abort, Progressing | Paused) => RolledBack,
        (CanaryCommand::Promote, Progressing | Paused) => Promoted,
        (command, phase) => {
            return Err(format!(
                "cannot {} a rollout that is {}",
                command.label(),
                match phase {
                    Progressing => "progressing",
                    Paused => "paused",
                    Promoted => "already promoted",
                    RolledBack => "already rolled back",
                }
            ));
        }
    };
    state.phase = next;
    state.failed_checks = 0;
    state.last_decision = command.label().to_owned();
    state.last_reason = "by an operator (control API)".to_owned();
    Ok(())
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
    /// Decisions, oldest first (the last `HISTORY` of them; repeated waits once).
    pub history: std::collections::VecDeque<CanaryEvent>,
}

/// Decisions a rollout's history keeps.
const HISTORY: usize = 200;

/// One decision, with what it was judged on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub decision: String,
    pub reason: String,
    /// The canary's weight after the decision.
    pub canary_weight: f64,
    pub canary: WindowSnapshot,
    pub stable: WindowSnapshot,
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
            history: std::collections::VecDeque::new(),
        }
    }

    /// Appends the last decision to the history (a wait repeating the one
    /// before it only once).
    fn remember(&mut self, canary_weight: f64) {
        if self.last_decision == "wait"
            && self
                .history
                .back()
                .is_some_and(|e| e.decision == "wait" && e.reason == self.last_reason)
        {
            return;
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.history.push_back(CanaryEvent {
            at_ms,
            decision: self.last_decision.clone(),
            reason: self.last_reason.clone(),
            canary_weight,
            canary: self.last_canary,
            stable: self.last_stable,
        });
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

struct CanaryEntry {
    policy: CanaryPolicy,
    state: CanaryState,
    last_check: Instant,
}

impl CanaryEntry {
    /// A rollout starting at its first step (its history begins with `started`).
    fn start(policy: &CanaryPolicy) -> Self {
        let mut state = CanaryState::new();
        state.remember(weight_for(policy, &state));
        CanaryEntry {
            policy: policy.clone(),
            state,
            last_check: Instant::now(),
        }
    }
}

/// Checks every canary rollout once per its interval and moves weights.
pub async fn run_controller(
    rollouts: Arc<Canaries>,
    catalog: Arc<CatalogStore>,
    traffic: Arc<Traffic>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let snapshot = catalog.snapshot();
        let mut updates: Vec<(String, f64)> = Vec::new();
        {
            let Ok(mut canaries) = rollouts.entries.lock() else {
                break;
            };
            canaries.retain(|name, _| {
                snapshot
                    .routes
                    .endpoints
                    .get(name)
                    .is_some_and(|e| e.canary.is_some())
            });
            for (name, endpoint) in &snapshot.routes.endpoints {
                let Some(policy) = &endpoint.canary else {
                    continue;
                };
                let entry = canaries
                    .entry(name.clone())
                    .or_insert_with(|| CanaryEntry::start(policy));
                if &entry.policy != policy {
                    info!(endpoint = %name, "Canary policy changed; the rollout starts over.");
                    *entry = CanaryEntry::start(policy);
                }
                if entry.state.phase == CanaryPhase::Paused {
                    // Traffic seen while paused is not judged after a resume.
                    traffic.window(name, &policy.stable).take();
                    traffic.window(name, &policy.canary).take();
                    entry.last_check = Instant::now();
                    continue;
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
                let stable = traffic.window(name, &policy.stable).take();
                let canary = traffic.window(name, &policy.canary).take();
                let decision = evaluate(policy, &mut entry.state, stable, canary);
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
                // An ended rollout's waits say nothing new.
                if label != "wait" || entry.state.phase == CanaryPhase::Progressing {
                    let weight = weight_for(&entry.policy, &entry.state);
                    entry.state.remember(weight);
                }
                metrics.canary_decision(name, label);
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
            set_weight(&catalog, &metrics, &endpoint, weight).await;
        }
    }
}

/// The canary's weight for a rollout state.
fn weight_for(policy: &CanaryPolicy, state: &CanaryState) -> f64 {
    match state.phase {
        CanaryPhase::Progressing | CanaryPhase::Paused => {
            policy.steps[state.step.min(policy.steps.len() - 1)]
        }
        CanaryPhase::Promoted => 100.0,
        CanaryPhase::RolledBack => 0.0,
    }
}

/// The canary rollouts in progress, by endpoint (the controller's state; the
/// edges show it).
#[derive(Default)]
pub struct Canaries {
    entries: Mutex<HashMap<String, CanaryEntry>>,
}

impl Canaries {
    pub fn new() -> Arc<Self> {
        Arc::new(Canaries::default())
    }

    /// Every rollout: its policy and its state, by endpoint.
    pub fn rollouts(&self) -> std::collections::BTreeMap<String, (CanaryPolicy, CanaryState)> {
        self.entries
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| (k.clone(), (v.policy.clone(), v.state.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Status of every canary rollout, by endpoint.
    pub fn states(&self) -> HashMap<String, CanaryState> {
        self.entries
            .lock()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| (k.clone(), v.state.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Canaries {
    /// An operator's command for the rollout of `endpoint`; returns its new state.
    pub fn command(
        &self,
        endpoint: &str,
        action: CanaryCommand,
        metrics: &Metrics,
    ) -> Result<CanaryState, crate::error::ApiError> {
        use crate::error::{ApiError, ErrorKind};
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| ApiError::internal("the canary state is poisoned"))?;
        let entry = entries.get_mut(endpoint).ok_or_else(|| {
            ApiError::not_found(format!(
                "endpoint `{endpoint}` has no canary rollout (a `canary:` policy in the route file)"
            ))
        })?;
        command(&mut entry.state, action)
            .map_err(|reason| ApiError::new(ErrorKind::Conflict, reason))?;
        let weight = weight_for(&entry.policy, &entry.state);
        entry.state.remember(weight);
        entry.last_check = Instant::now();
        metrics.canary_decision(endpoint, action.label());
        info!(
            endpoint,
            action = action.label(),
            "Canary rollout changed by an operator."
        );
        Ok(entry.state.clone())
    }

    /// Pauses the rollout of `endpoint` if one progresses; `Err` names why a
    /// manual change would fight it (unless `force`).
    fn yield_to_operator(
        &self,
        endpoint: &str,
        force: bool,
        metrics: &Metrics,
    ) -> Result<(), String> {
        let Ok(mut entries) = self.entries.lock() else {
            return Ok(());
        };
        let Some(entry) = entries.get_mut(endpoint) else {
            return Ok(());
        };
        if entry.state.phase != CanaryPhase::Progressing {
            return Ok(());
        }
        if !force {
            return Err(format!(
                "endpoint `{endpoint}` has a canary rollout in progress that sets its weights; pause it first (POST /v2/endpoints/{endpoint}/canary/pause) or pass \"force\": true, which pauses it"
            ));
        }
        let _ = command(&mut entry.state, CanaryCommand::Pause);
        let weight = weight_for(&entry.policy, &entry.state);
        entry.state.remember(weight);
        metrics.canary_decision(endpoint, "pause");
        Ok(())
    }
}

/// Sets an endpoint's variant weights by hand (the control API), as one
/// catalog swap. They hold until the route file changes. A progressing
/// canary rollout would overwrite them: refused unless `force` (which pauses it).
pub async fn set_weights(
    catalog: &CatalogStore,
    canaries: &Canaries,
    metrics: &Metrics,
    endpoint: &str,
    weights: &std::collections::BTreeMap<String, f64>,
    force: bool,
) -> Result<(), crate::error::ApiError> {
    use crate::error::{ApiError, ErrorKind};
    let writer = catalog.writer().await;
    let current = writer.current();
    let existing = current
        .routes
        .endpoints
        .get(endpoint)
        .ok_or_else(|| ApiError::not_found(format!("unknown endpoint `{endpoint}`")))?;
    let names: Vec<&str> = existing.variants.iter().map(|v| v.name.as_str()).collect();
    for (name, weight) in weights {
        if !names.contains(&name.as_str()) {
            return Err(ApiError::invalid(format!(
                "endpoint `{endpoint}` has no variant `{name}`; variants: {names:?}"
            )));
        }
        if !(weight.is_finite() && *weight >= 0.0) {
            return Err(ApiError::invalid(format!(
                "variant `{name}`: a weight is a non-negative number, got {weight}"
            )));
        }
    }
    let mut updated = (**existing).clone();
    for variant in &mut updated.variants {
        if let Some(weight) = weights.get(&variant.name) {
            variant.weight = *weight;
        }
    }
    if updated.variants.iter().map(|v| v.weight).sum::<f64>() <= 0.0 {
        return Err(ApiError::invalid(format!(
            "endpoint `{endpoint}`: the weights would add up to 0; some variant must take traffic"
        )));
    }
    canaries
        .yield_to_operator(endpoint, force, metrics)
        .map_err(|reason| ApiError::new(ErrorKind::Conflict, reason))?;
    info!(endpoint, ?weights, "Endpoint weights set by an operator.");
    publish_endpoint(&writer, metrics, updated);
    Ok(())
}

/// Swaps one endpoint's new variants in (its weight gauges follow), as one catalog swap.
fn publish_endpoint(
    writer: &crate::serve::catalog::CatalogWriter<'_>,
    metrics: &Metrics,
    updated: crate::config::routes::Endpoint,
) {
    for variant in &updated.variants {
        metrics.set_route_weight(&updated.name, &variant.name, variant.weight);
    }
    let current = writer.current();
    let mut routes = (*current.routes).clone();
    routes
        .endpoints
        .insert(updated.name.clone(), Arc::new(updated));
    let mut next = (*current).clone();
    next.routes = Arc::new(routes);
    writer.publish(next);
}

/// Sets a canary's share of its endpoint (the stable gets the rest), as one catalog swap.
async fn set_weight(catalog: &CatalogStore, metrics: &Metrics, endpoint: &str, percent: f64) {
    let writer = catalog.writer().await;
    let current = writer.current();
    let Some(existing) = current.routes.endpoints.get(endpoint) else {
        return;
    };
    let Some(policy) = existing.canary.clone() else {
        return;
    };
    let mut updated = (**existing).clone();
    set_canary_weight(&mut updated, &policy, percent);
    publish_endpoint(&writer, metrics, updated);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[test]
    fn operator_commands_follow_the_phases() {
        let mut state = CanaryState::new();
        command(&mut state, CanaryCommand::Pause).unwrap();
        assert_eq!(state.phase, CanaryPhase::Paused);
        assert!(
            command(&mut state, CanaryCommand::Pause)
                .unwrap_err()
                .contains("paused")
        );
        command(&mut state, CanaryCommand::Resume).unwrap();
        assert_eq!(state.phase, CanaryPhase::Progressing);
        command(&mut state, CanaryCommand::Abort).unwrap();
        assert_eq!(state.phase, CanaryPhase::RolledBack);
        assert_eq!(state.last_decision, "abort");
        let err = command(&mut state, CanaryCommand::Promote).unwrap_err();
        assert!(err.contains("already rolled back"), "{err}");
        // A paused rollout's weight stays where the rollout stood.
        let mut paused = CanaryState::new();
        paused.step = 1;
        command(&mut paused, CanaryCommand::Pause).unwrap();
        assert_eq!(weight_for(&policy(), &paused), 50.0);
    }
}
