//! The rollout rules, pure and unit-tested: `evaluate_shadow` judges one
//! interval of a candidate's shadow answers (its success and its agreement
//! with the stable answers) and `evaluate` one interval of a canary's live
//! outcomes against the stable's; each waits, holds, moves on, promotes or
//! rolls back. `command` applies an operator's pause, resume, abort or
//! promote. `control::rollouts` runs them.

use serde::Serialize;

use crate::config::rollout::ShadowGate;
use crate::config::routes::CanaryPolicy;
use crate::serve::agreement::Agreement;
use crate::serve::traffic::WindowSnapshot;

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

    pub fn label(self) -> &'static str {
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

/// Which gates a progressing rollout is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The candidate answers copies only; its outputs are compared.
    Shadow,
    /// The candidate answers its weight's share of live requests.
    Canary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryState {
    pub phase: CanaryPhase,
    pub stage: Stage,
    /// Index into the policy's steps.
    pub step: usize,
    pub failed_checks: u32,
    pub last_decision: String,
    pub last_reason: String,
    pub last_canary: WindowSnapshot,
    pub last_stable: WindowSnapshot,
    /// The shadow phase's last interval: the candidate's copies and how they agreed.
    pub last_shadow: Option<WindowSnapshot>,
    pub last_agreement: Option<Agreement>,
    /// Decisions, oldest first (the last `HISTORY` of them; repeated waits once).
    pub history: std::collections::VecDeque<CanaryEvent>,
    /// Fleet mode: the boundary (ms since the epoch) the last decision judged.
    pub boundary_ms: Option<u64>,
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
    /// The canary's weight and the stage after the decision.
    pub canary_weight: f64,
    pub stage: Stage,
    pub canary: WindowSnapshot,
    pub stable: WindowSnapshot,
    /// Set for decisions judged on the shadow's copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<WindowSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<Agreement>,
    /// Fleet mode: the boundary the decision judged (the same on every replica).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boundary_ms: Option<u64>,
}

impl CanaryState {
    /// A rollout at its start: in the shadow stage when it has one.
    pub fn new(shadow: bool) -> Self {
        CanaryState {
            phase: CanaryPhase::Progressing,
            stage: if shadow { Stage::Shadow } else { Stage::Canary },
            step: 0,
            failed_checks: 0,
            last_decision: "started".to_owned(),
            last_reason: String::new(),
            last_canary: WindowSnapshot::default(),
            last_stable: WindowSnapshot::default(),
            last_shadow: None,
            last_agreement: None,
            history: std::collections::VecDeque::new(),
            boundary_ms: None,
        }
    }

    /// Appends the last decision to the history (a wait repeating the one
    /// before it only once).
    pub fn remember(&mut self, canary_weight: f64) {
        // Fleet holds repeat each boundary while Prometheus is away: kept once too.
        let repeats = self.last_decision == "wait"
            || (self.last_decision == "hold" && self.last_reason.starts_with("holding: "));
        if repeats
            && self
                .history
                .back()
                .is_some_and(|e| e.decision == self.last_decision && e.reason == self.last_reason)
        {
            return;
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        let judged_in_shadow = self.stage == Stage::Shadow || self.last_decision == "shadow_passed";
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.history.push_back(CanaryEvent {
            at_ms,
            decision: self.last_decision.clone(),
            reason: self.last_reason.clone(),
            canary_weight,
            stage: self.stage,
            canary: self.last_canary,
            stable: self.last_stable,
            shadow: judged_in_shadow.then_some(self.last_shadow).flatten(),
            agreement: judged_in_shadow
                .then(|| self.last_agreement.clone())
                .flatten(),
            boundary_ms: self.boundary_ms,
        });
    }
}

impl Default for CanaryState {
    fn default() -> Self {
        Self::new(false)
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
    /// The shadow's answers passed: the canary starts at this weight.
    ShadowPassed(f64),
    Promote,
    Rollback(String),
    /// Fleet mode: the fleet's numbers are unreadable or incomplete; nothing
    /// moves and no check counts as failed.
    FleetHold(String),
    /// Fleet mode: every replica has the candidate; the rollout starts now.
    FleetStart,
}

/// The shadow rule: once the candidate has answered `min_requests` copies in
/// an interval, judge its success rate and how its outputs agreed with the
/// stable answers to the same requests (each output's gates); pass → the
/// canary's first step, fail `failures_to_rollback` times in a row → roll back.
pub fn evaluate_shadow(
    gate: &ShadowGate,
    policy: &CanaryPolicy,
    state: &mut CanaryState,
    shadow: WindowSnapshot,
    agreement: Agreement,
) -> Decision {
    state.last_shadow = Some(shadow);
    if state.phase != CanaryPhase::Progressing || state.stage != Stage::Shadow {
        state.last_agreement = Some(agreement);
        return Decision::Wait(format!("rollout already {:?}", state.phase));
    }
    if shadow.total() < gate.min_requests {
        state.last_agreement = Some(agreement);
        return Decision::Wait(format!(
            "shadow answered {} copies this interval; {} needed to judge",
            shadow.total(),
            gate.min_requests
        ));
    }
    let mut problems = Vec::new();
    if shadow.success_rate() < gate.min_success_rate {
        problems.push(format!(
            "shadow success rate {:.2}% < {:.2}%",
            shadow.success_rate(),
            gate.min_success_rate
        ));
    }
    if agreement.compared == 0 && problems.is_empty() {
        state.last_agreement = Some(agreement);
        return Decision::Wait(
            "no shadow answer could be compared (the stable answers failed)".to_owned(),
        );
    }
    if agreement.compared > 0 && agreement.agreement_rate() < gate.min_agreement {
        problems.push(format!(
            "outputs agree on {:.2}% of {} compared requests < {:.2}% (tolerance abs {}, rel {})",
            agreement.agreement_rate(),
            agreement.compared,
            gate.min_agreement,
            gate.tolerance.abs,
            gate.tolerance.rel
        ));
    }
    for (name, output) in &agreement.outputs {
        if output.mismatched > 0 {
            problems.push(format!(
                "output `{name}`: datatype or shape differs (or missing) in {} of {} requests",
                output.mismatched, output.compared
            ));
        }
        if let (Some(max), Some(seen)) = (gate.max_abs_difference, output.max_abs_diff)
            && seen > max
        {
            problems.push(format!(
                "output `{name}`: max |difference| {seen:.3e} > {max:.3e}"
            ));
        }
        if let (Some(max), Some(seen)) = (gate.max_mean_abs_difference, output.mean_abs_diff)
            && seen > max
        {
            problems.push(format!(
                "output `{name}`: mean |difference| {seen:.3e} > {max:.3e}"
            ));
        }
        if let Some(min) = gate.min_argmax_agreement
            && output.argmax_rows > 0
        {
            let rate = output.argmax_same as f64 * 100.0 / output.argmax_rows as f64;
            if rate < min {
                problems.push(format!(
                    "output `{name}`: argmax agrees on {rate:.2}% of {} rows < {min:.2}%",
                    output.argmax_rows
                ));
            }
        }
    }
    state.last_agreement = Some(agreement);
    if !problems.is_empty() {
        state.failed_checks += 1;
        let reason = problems.join("; ");
        if state.failed_checks >= gate.failures_to_rollback {
            state.phase = CanaryPhase::RolledBack;
            return Decision::Rollback(format!("in the shadow phase: {reason}"));
        }
        return Decision::Hold(reason);
    }
    state.failed_checks = 0;
    state.stage = Stage::Canary;
    state.step = 0;
    Decision::ShadowPassed(policy.steps[0])
}

/// The candidate's own breaker is open (its runs keep failing), so no request
/// reaches it to be judged: a failed check, whatever the windows hold.
pub fn candidate_unhealthy(
    failures_to_rollback: u32,
    state: &mut CanaryState,
    reason: &str,
) -> Decision {
    if state.phase != CanaryPhase::Progressing {
        return Decision::Wait(format!("rollout already {:?}", state.phase));
    }
    state.failed_checks += 1;
    let stage = match state.stage {
        Stage::Shadow => "shadow",
        Stage::Canary => "canary",
    };
    let reason = format!("the candidate is unhealthy in the {stage} phase: {reason}");
    if state.failed_checks >= failures_to_rollback {
        state.phase = CanaryPhase::RolledBack;
        return Decision::Rollback(reason);
    }
    Decision::Hold(reason)
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
    if state.phase != CanaryPhase::Progressing || state.stage != Stage::Canary {
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

/// The canary's weight for a rollout state (none while it only shadows).
pub fn weight_for(policy: &CanaryPolicy, state: &CanaryState) -> f64 {
    match state.phase {
        CanaryPhase::Progressing | CanaryPhase::Paused if state.stage == Stage::Shadow => 0.0,
        CanaryPhase::Progressing | CanaryPhase::Paused => {
            policy.steps[state.step.min(policy.steps.len() - 1)]
        }
        CanaryPhase::Promoted => 100.0,
        CanaryPhase::RolledBack => 0.0,
    }
}

/// A rollout's phase as metrics and logs name it (`metrics::ROLLOUT_PHASES`).
pub fn phase_label(state: &CanaryState) -> &'static str {
    match (state.phase, state.stage) {
        (CanaryPhase::Progressing, Stage::Shadow) => "shadow",
        (CanaryPhase::Progressing, Stage::Canary) => "canary",
        (CanaryPhase::Paused, _) => "paused",
        (CanaryPhase::Promoted, _) => "promoted",
        (CanaryPhase::RolledBack, _) => "rolled_back",
    }
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
        let mut s = CanaryState::new(false);
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
        let mut s = CanaryState::new(false);
        let stable = window(900, 0, 1.0);
        assert!(
            matches!(evaluate(&p, &mut s, stable, window(90, 10, 1.0)), Decision::Hold(r) if r.contains("success rate"))
        );
        assert!(
            matches!(evaluate(&p, &mut s, stable, window(100, 0, 5.0)), Decision::Rollback(r) if r.contains("p99"))
        );
        assert_eq!(s.phase, CanaryPhase::RolledBack);
        // A pass in between resets the count.
        let mut s = CanaryState::new(false);
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

    fn gate() -> ShadowGate {
        ShadowGate {
            percent: 10.0,
            interval: Duration::from_secs(1),
            min_requests: 20,
            tolerance: crate::config::routes::Tolerance::default(),
            min_agreement: 99.0,
            max_abs_difference: Some(0.01),
            max_mean_abs_difference: None,
            min_argmax_agreement: Some(99.0),
            min_success_rate: 99.0,
            failures_to_rollback: 1,
        }
    }

    fn agreement(compared: u64, agreed: u64, max_diff: f64, argmax_same: u64) -> Agreement {
        use crate::serve::agreement::{Comparison, Verdict};
        let mut total = Agreement::default();
        for i in 0..compared {
            total.add(&[Comparison {
                output: "p".into(),
                verdict: if i < agreed {
                    Verdict::Agree
                } else {
                    Verdict::Disagree
                },
                max_abs_diff: Some(if i < agreed { 0.0 } else { max_diff }),
                mean_abs_diff: Some(0.0),
                argmax: Some((u64::from(i < argmax_same), 1)),
            }]);
        }
        total
    }

    #[test]
    fn a_shadow_that_agrees_moves_to_the_canary_and_one_that_differs_is_rolled_back() {
        let (g, p) = (gate(), policy());
        let mut s = CanaryState::new(true);
        assert_eq!(weight_for(&p, &s), 0.0, "a shadow takes no live traffic");
        assert!(matches!(
            evaluate_shadow(&g, &p, &mut s, window(5, 0, 1.0), agreement(5, 5, 0.0, 5)),
            Decision::Wait(_)
        ));
        assert_eq!(
            evaluate_shadow(
                &g,
                &p,
                &mut s,
                window(100, 0, 1.0),
                agreement(100, 100, 0.0, 100)
            ),
            Decision::ShadowPassed(10.0)
        );
        assert_eq!((s.stage, weight_for(&p, &s)), (Stage::Canary, 10.0));
        assert_eq!(phase_label(&s), "canary");

        let mut s = CanaryState::new(true);
        let decision = evaluate_shadow(
            &g,
            &p,
            &mut s,
            window(100, 0, 1.0),
            agreement(100, 90, 0.5, 90),
        );
        let Decision::Rollback(reason) = decision else {
            panic!("{decision:?}")
        };
        for expected in [
            "agree on 90.00% of 100",
            "max |difference|",
            "argmax agrees on 90.00%",
        ] {
            assert!(reason.contains(expected), "{reason}");
        }
        assert_eq!(phase_label(&s), "rolled_back");

        // A candidate failing on its copies is rolled back though nothing compared.
        let mut s = CanaryState::new(true);
        assert!(matches!(
            evaluate_shadow(&g, &p, &mut s, window(0, 50, 0.0), Agreement::default()),
            Decision::Rollback(r) if r.contains("shadow success rate 0.00%")
        ));
    }

    #[test]
    fn operator_commands_follow_the_phases() {
        let mut state = CanaryState::new(false);
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
        let mut paused = CanaryState::new(false);
        paused.step = 1;
        command(&mut paused, CanaryCommand::Pause).unwrap();
        assert_eq!(weight_for(&policy(), &paused), 50.0);
    }
}
