//! The rollout controller: one task that judges every rollout once per its
//! interval with the rules in `control::canary` — the route file's canary
//! endpoints, and models rolling out a new version under their rollout
//! policy — and applies the result through the catalog store (one swap each):
//! new weights, the shadow copy switched off when the canary starts, and at
//! the end a promotion (the candidate becomes the model's stable version, the
//! previous one stays loaded for `keep_previous`) or a rollback (the candidate
//! leaves and is not loaded again until its content changes). It also holds
//! the rollouts' states for the control API and the console.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::rollout::ShadowGate;
use crate::config::routes::{CanaryPolicy, Endpoint, set_canary_weight};
use crate::control::canary::{
    CanaryCommand, CanaryPhase, CanaryState, Decision, Stage, candidate_unhealthy, command,
    evaluate, evaluate_shadow, phase_label, weight_for,
};
use crate::control::fleet::{self, Ask, Assessment, Prometheus, Reading};
use crate::control::source::{RolloutRecord, Source};
use crate::metrics::Metrics;
use crate::serve::catalog::{CatalogStore, ModelRollout};
use crate::serve::traffic::Traffic;

/// What a model rollout was about (a route-file canary has none).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelVersions {
    pub model: String,
    pub stable: u64,
    pub candidate: u64,
}

struct RolloutEntry {
    policy: CanaryPolicy,
    shadow: Option<ShadowGate>,
    /// Set for a model's rollout: its versions and when it started.
    model: Option<(ModelVersions, Instant)>,
    state: CanaryState,
    last_check: Instant,
    started: Instant,
    /// The label replicas report this rollout's candidate under.
    candidate: String,
    /// Fleet mode: not every replica has the candidate yet (no live share).
    waiting_for_fleet: bool,
    /// Fleet mode: the last boundary read (ms since the epoch).
    last_boundary: u64,
}

impl RolloutEntry {
    fn start(live: &Live, fleet: Option<&fleet::FleetConfig>) -> Self {
        let mut state = CanaryState::new(live.shadow.is_some());
        let waiting_for_fleet = fleet.is_some();
        if waiting_for_fleet {
            state.last_reason =
                "fleet mode: waiting for every replica to have the candidate".into();
            state.remember(0.0);
        } else {
            state.remember(weight_for(&live.policy, &state));
        }
        let now_ms = unix_ms();
        RolloutEntry {
            policy: live.policy.clone(),
            shadow: live.shadow.clone(),
            model: live.model.as_ref().map(|r| {
                (
                    ModelVersions {
                        model: live.name.clone(),
                        stable: r.stable,
                        candidate: r.candidate,
                    },
                    r.started,
                )
            }),
            state,
            last_check: Instant::now(),
            started: live.model.as_ref().map_or_else(Instant::now, |r| r.started),
            candidate: live.candidate_label(),
            waiting_for_fleet,
            // The boundaries before this replica had the rollout are not its to read.
            last_boundary: fleet.map_or(0, |f| {
                fleet::due_boundary(now_ms, live.first_interval(), f.settle)
            }),
        }
    }

    /// This entry's weight for the candidate now.
    fn weight(&self) -> f64 {
        if self.waiting_for_fleet && self.state.phase == CanaryPhase::Progressing {
            0.0
        } else {
            weight_for(&self.policy, &self.state)
        }
    }

    fn ended(&self) -> bool {
        matches!(
            self.state.phase,
            CanaryPhase::Promoted | CanaryPhase::RolledBack
        )
    }
}

/// The finest p99 ratio fleet mode's bucketed p99s are trusted to judge.
const FLEET_MIN_P99_RATIO: f64 = 1.5;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A rollout the catalog holds now.
struct Live {
    name: String,
    endpoint: Arc<Endpoint>,
    policy: CanaryPolicy,
    shadow: Option<ShadowGate>,
    model: Option<Arc<ModelRollout>>,
    /// Why the candidate (canary variant) refuses requests (its breaker is open).
    unhealthy: Option<String>,
}

impl Live {
    /// A model's candidate version, or a route-file canary's variant.
    fn candidate_label(&self) -> String {
        self.model
            .as_ref()
            .map_or_else(|| self.policy.canary.clone(), |r| r.candidate.to_string())
    }

    fn first_interval(&self) -> Duration {
        self.shadow
            .as_ref()
            .map_or(self.policy.interval, |gate| gate.interval)
    }
}

/// A change the controller makes to the catalog.
enum Update {
    /// A route-file canary's weight.
    Weight { endpoint: String, percent: f64 },
    /// A model rollout's candidate weight, and whether copies still go to it.
    Stage {
        model: String,
        candidate: u64,
        percent: f64,
        shadow: bool,
    },
    /// A model rollout's end.
    End {
        model: String,
        candidate: u64,
        promoted: bool,
        reason: String,
        /// What it was judged on, for the source's record.
        evidence: String,
    },
}

/// The rollouts, by endpoint or model name (the controller's state; the edges show it).
#[derive(Default)]
pub struct Rollouts {
    entries: Mutex<HashMap<String, RolloutEntry>>,
    memory: Memory,
    /// Fleet mode: decisions from Prometheus's fleet-wide numbers.
    fleet: Option<Arc<Prometheus>>,
    /// The model sources, by index: a model's rollout outcome is recorded in
    /// its source (MLflow moves its serving alias and tags the version).
    sources: Vec<Arc<dyn Source>>,
}

/// What a model's rollouts decided, kept on disk so that a restarted server
/// serves the promoted version, not simply the newest, and does not bring a
/// rolled-back version back (a rollout left unfinished starts again).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Remembered {
    pub stable: Option<u64>,
    /// Version → (fingerprint, reason).
    #[serde(default)]
    pub rolled_back: BTreeMap<u64, (String, String)>,
}

/// The file rollouts' outcomes are kept in (`<model cache dir>/rollouts.json`);
/// none: nothing is remembered.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    path: Option<std::path::PathBuf>,
}

impl Memory {
    pub fn new(path: Option<std::path::PathBuf>) -> Self {
        Memory { path }
    }

    /// Every model's outcomes; an unreadable file is said once and treated as empty.
    pub fn load(&self) -> BTreeMap<String, Remembered> {
        let Some(path) = &self.path else {
            return BTreeMap::new();
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                warn!(path = %path.display(), error = %err, "Rollout memory unreadable; starting without it.");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Records `model`'s outcomes (written whole to a temp file, then renamed).
    fn save(&self, model: &str, remembered: Remembered) {
        let Some(path) = &self.path else {
            return;
        };
        let mut all = self.load();
        all.insert(model.to_owned(), remembered);
        let written = (|| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let temp = path.with_extension("json.tmp");
            std::fs::write(&temp, serde_json::to_vec_pretty(&all)?)?;
            std::fs::rename(&temp, path)
        })();
        if let Err(err) = written {
            warn!(path = %path.display(), error = %err, "Could not remember the rollout's outcome; a restart serves the newest version.");
        }
    }
}

/// One rollout as the control API shows it.
pub struct RolloutView {
    pub policy: CanaryPolicy,
    pub shadow: Option<ShadowGate>,
    pub model: Option<ModelVersions>,
    pub state: CanaryState,
    /// Fleet mode: whether it waits for every replica, and the last boundary read.
    pub fleet: Option<(bool, u64)>,
    pub canary_weight: f64,
}

/// Checks every rollout once per its interval and moves it along.
pub async fn run_controller(
    rollouts: Arc<Rollouts>,
    catalog: Arc<CatalogStore>,
    traffic: Arc<Traffic>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let prometheus = rollouts.fleet.clone();
    let fleet_config = prometheus.as_ref().map(|p| p.config().clone());
    // Boundary readings made since the last turn, by rollout.
    let mut readings: HashMap<String, (Ask, Result<Reading, String>)> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let snapshot = catalog.snapshot();
        let live: Vec<Live> = snapshot
            .routes
            .endpoints
            .iter()
            .filter_map(|(name, endpoint)| {
                Some(Live {
                    name: name.clone(),
                    endpoint: endpoint.clone(),
                    policy: endpoint.canary.clone()?,
                    shadow: None,
                    model: None,
                    unhealthy: endpoint
                        .variants
                        .iter()
                        .find(|v| Some(&v.name) == endpoint.canary.as_ref().map(|c| &c.canary))
                        .and_then(|v| snapshot.unhealthy(&v.target)),
                })
            })
            .chain(snapshot.models.iter().filter_map(|(name, entry)| {
                let rollout = entry.rollout.clone()?;
                let unhealthy = entry
                    .versions
                    .get(&rollout.candidate)
                    .and_then(|v| v.unhealthy());
                Some(Live {
                    unhealthy,
                    name: name.clone(),
                    endpoint: rollout.endpoint.clone(),
                    policy: rollout.policy.canary.clone(),
                    shadow: rollout.policy.shadow.clone(),
                    model: Some(rollout),
                })
            }))
            .collect();
        let memory = rollouts.memory.clone();
        let sources = rollouts.sources.clone();
        let updates = {
            let Ok(mut entries) = rollouts.entries.lock() else {
                break;
            };
            // An ended model rollout stays listed (with its history) until
            // the model goes or its next rollout starts.
            entries.retain(|name, entry| {
                live.iter().any(|l| &l.name == name)
                    || (entry.model.is_some()
                        && entry.ended()
                        && snapshot.models.contains_key(name))
            });
            let mut turn = Turn {
                traffic: &traffic,
                metrics: &metrics,
                fleet: fleet_config.as_ref(),
                readings: &mut readings,
                asks: Vec::new(),
                updates: Vec::new(),
            };
            for l in &live {
                step(l, &mut entries, &mut turn);
            }
            let Turn { asks, updates, .. } = turn;
            (asks, updates)
        };
        let (asks, updates) = updates;
        for update in updates {
            apply(&catalog, &metrics, &memory, &sources, update).await;
        }
        // Read outside the lock; the next turn judges what came back.
        if let Some(prometheus) = &prometheus
            && !asks.is_empty()
        {
            let read = asks.iter().map(|ask| prometheus.read(ask));
            let results = tokio::select! {
                _ = cancel.cancelled() => break,
                results = futures::future::join_all(read) => results,
            };
            for (ask, result) in asks.into_iter().zip(results) {
                readings.insert(ask.rollout.clone(), (ask, result));
            }
        }
    }
}

/// What one controller turn works with and produces.
struct Turn<'a> {
    traffic: &'a Traffic,
    metrics: &'a Metrics,
    fleet: Option<&'a fleet::FleetConfig>,
    readings: &'a mut HashMap<String, (Ask, Result<Reading, String>)>,
    /// Boundaries due, to read from Prometheus.
    asks: Vec<Ask>,
    updates: Vec<Update>,
}

/// One rollout's turn: restart it if it is new, keep the catalog's weights
/// where its state says, and judge it when its interval is up (fleet mode:
/// when its next boundary has been read from Prometheus).
fn step(l: &Live, entries: &mut HashMap<String, RolloutEntry>, turn: &mut Turn<'_>) {
    let (traffic, metrics) = (turn.traffic, turn.metrics);
    let name = &l.name;
    let identity = l.model.as_ref().map(|r| (r.candidate, r.started));
    // The shadow's window (one per model rollout); the live variants' are the name's.
    let shadow_window = l
        .endpoint
        .shadow
        .as_ref()
        .map_or(name.as_str(), |s| s.window.as_str());
    let new = !entries.contains_key(name);
    let entry = entries
        .entry(name.clone())
        .or_insert_with(|| RolloutEntry::start(l, turn.fleet));
    let changed = entry.policy != l.policy
        || entry.shadow != l.shadow
        || entry.model.as_ref().map(|(v, at)| (v.candidate, *at)) != identity;
    if new || changed {
        if l.model.is_none() && changed {
            info!(endpoint = %name, "Canary policy changed; the rollout starts over.");
        }
        *entry = RolloutEntry::start(l, turn.fleet);
        if let Some(fleet) = turn.fleet {
            let shortest = l.first_interval().min(l.policy.interval);
            if shortest < fleet.settle * 2 {
                warn!(rollout = %name, interval = ?shortest, settle = ?fleet.settle,
                    "Fleet mode: an interval shorter than twice --fleet-settle reads the replicas' places before their last decision is scraped; the rollout moves slowly. Lengthen the intervals.");
            }
            if let Some(ratio) = l.policy.max_p99_ratio.filter(|r| *r < FLEET_MIN_P99_RATIO) {
                warn!(rollout = %name, ratio,
                    "Fleet mode: p99s come from Prometheus's histogram buckets; a max_p99_ratio under {FLEET_MIN_P99_RATIO} may fail identical traffic.");
            }
        }
        metrics.set_rollout_phase(name, phase_label(&entry.state));
        metrics.clear_rollout(name);
        // Outcomes left from before this rollout are not its to judge.
        for variant in [&l.policy.stable, &l.policy.canary] {
            traffic.window(name, variant).take();
        }
        traffic.window(shadow_window, "shadow").take();
        traffic.take_agreement(shadow_window);
        turn.readings.remove(name);
    }
    let model = l.model.as_ref();
    match entry.state.phase {
        CanaryPhase::Paused => {
            // Traffic seen while paused is not judged after a resume.
            for variant in [&l.policy.stable, &l.policy.canary] {
                traffic.window(name, variant).take();
            }
            traffic.window(shadow_window, "shadow").take();
            traffic.take_agreement(shadow_window);
            entry.last_check = Instant::now();
            report_position(metrics, name, entry);
            return;
        }
        // Ended by an operator (or last turn): a model's rollout ends in the catalog.
        CanaryPhase::Promoted | CanaryPhase::RolledBack if model.is_some() => {
            if let Some(rollout) = model {
                turn.updates.push(Update::End {
                    model: name.clone(),
                    candidate: rollout.candidate,
                    promoted: entry.state.phase == CanaryPhase::Promoted,
                    reason: entry.state.last_reason.clone(),
                    evidence: evidence(&entry.state),
                });
            }
            return;
        }
        _ => {}
    }
    let wanted = entry.weight();
    let current = l
        .endpoint
        .variants
        .iter()
        .find(|v| v.name == l.policy.canary)
        .map(|v| v.weight);
    match model {
        Some(rollout) => {
            let shadow = entry.state.stage == Stage::Shadow;
            if current != Some(wanted) || l.endpoint.shadow.is_some() != shadow {
                turn.updates.push(Update::Stage {
                    model: name.clone(),
                    candidate: rollout.candidate,
                    percent: wanted,
                    shadow,
                });
            }
        }
        // A reloaded route file restarts at step 0; keep the rollout where it is.
        None if current != Some(wanted) => turn.updates.push(Update::Weight {
            endpoint: name.clone(),
            percent: wanted,
        }),
        None => {}
    }
    if entry.state.phase == CanaryPhase::Progressing {
        report_position(metrics, name, entry);
    }
    let interval = match (&entry.shadow, entry.state.stage) {
        (Some(gate), Stage::Shadow) => gate.interval,
        _ => entry.policy.interval,
    };
    // Fleet mode judges aligned boundaries from Prometheus, once each.
    let fleet_reading = match turn.fleet {
        // An ended route-file canary has nothing left to read.
        Some(_) if entry.state.phase != CanaryPhase::Progressing => return,
        Some(fleet) => {
            let boundary = fleet::due_boundary(unix_ms(), interval, fleet.settle);
            if boundary <= entry.last_boundary {
                return;
            }
            let ask = Ask {
                rollout: name.clone(),
                candidate: entry.candidate.clone(),
                stable: entry.policy.stable.clone(),
                canary: entry.policy.canary.clone(),
                boundary_ms: boundary,
                window: interval,
            };
            match turn.readings.remove(name) {
                Some((asked, result)) if asked == ask => {
                    entry.last_boundary = boundary;
                    entry.state.boundary_ms = Some(boundary);
                    Some(result)
                }
                _ => {
                    turn.asks.push(ask);
                    return;
                }
            }
        }
        None => {
            if entry.last_check.elapsed() < interval {
                return;
            }
            None
        }
    };
    entry.last_check = Instant::now();
    let local_stable = traffic.window(name, &entry.policy.stable).take();
    let local_canary = traffic.window(name, &entry.policy.canary).take();
    let local_copies = traffic.window(shadow_window, "shadow").take();
    let local_agreement = traffic.take_agreement(shadow_window);
    let mut adopted = false;
    // Fleet mode: a decision the reading settles by itself, or the fleet's numbers to judge.
    let (settled, numbers) = match fleet_reading {
        None => (
            None,
            (local_stable, local_canary, local_copies, local_agreement),
        ),
        Some(Err(err)) => {
            metrics.fleet_read(name, "error");
            let reason = format!("holding: cannot read the fleet's numbers: {err}");
            (Some(Decision::FleetHold(reason)), Default::default())
        }
        Some(Ok(reading)) => match fleet::assess(&reading, &entry.candidate) {
            Assessment::Hold(reason) => {
                metrics.fleet_read(name, "incomplete");
                (
                    Some(Decision::FleetHold(format!("holding: {reason}"))),
                    Default::default(),
                )
            }
            Assessment::Ended { promoted } => {
                metrics.fleet_read(name, "judged");
                adopted = true;
                entry.waiting_for_fleet = false;
                entry.state.phase = if promoted {
                    CanaryPhase::Promoted
                } else {
                    CanaryPhase::RolledBack
                };
                let decision = if promoted {
                    Decision::Promote
                } else {
                    Decision::Rollback("another replica rolled it back; the fleet follows".into())
                };
                (Some(decision), Default::default())
            }
            Assessment::Judge(position) => {
                metrics.fleet_read(name, "judged");
                let numbers = (
                    reading.stable,
                    reading.canary,
                    reading.shadow,
                    reading.agreement,
                );
                if position.position == fleet::WAITING {
                    entry.waiting_for_fleet = false;
                    (Some(Decision::FleetStart), numbers)
                } else {
                    // Never back: a sample older than this replica's last
                    // decision (a scrape missed) must not undo it. Replicas
                    // behind the fleet catch up; equal numbers give every
                    // replica the same verdict, so none can end otherwise.
                    let own = fleet::position_of(&entry.state, entry.waiting_for_fleet);
                    let position = position.max(own);
                    entry.waiting_for_fleet = false;
                    fleet::adopt(
                        &mut entry.state,
                        position,
                        entry.policy.steps.len(),
                        entry.shadow.is_some(),
                    );
                    (None, numbers)
                }
            }
        },
    };
    let (stable, canary, copies, agreement) = numbers;
    let decision = match (settled, &entry.shadow, entry.state.stage) {
        (Some(decision), _, _) => {
            entry.state.last_stable = stable;
            entry.state.last_canary = canary;
            decision
        }
        _ if l.unhealthy.is_some() => {
            entry.state.last_stable = stable;
            entry.state.last_canary = canary;
            let failures = match (&entry.shadow, entry.state.stage) {
                (Some(gate), Stage::Shadow) => gate.failures_to_rollback,
                _ => entry.policy.failures_to_rollback,
            };
            let reason = l.unhealthy.as_deref().unwrap_or_default();
            candidate_unhealthy(failures, &mut entry.state, reason)
        }
        (None, Some(gate), Stage::Shadow) => {
            entry.state.last_stable = stable;
            evaluate_shadow(gate, &entry.policy, &mut entry.state, copies, agreement)
        }
        _ => evaluate(&entry.policy, &mut entry.state, stable, canary),
    };
    let (label, reason) = match &decision {
        Decision::Wait(reason) => ("wait", reason.clone()),
        Decision::Hold(reason) | Decision::FleetHold(reason) => ("hold", reason.clone()),
        Decision::FleetStart => (
            "wait",
            "every replica has the candidate: the rollout starts at this boundary".to_owned(),
        ),
        Decision::StepUp(to) => ("step_up", format!("checks passed; canary weight → {to}%")),
        Decision::ShadowPassed(to) => (
            "shadow_passed",
            format!("the shadow's answers agree; canary weight → {to}%"),
        ),
        Decision::Promote if adopted => (
            "promote",
            "another replica promoted it; the fleet follows".to_owned(),
        ),
        Decision::Promote => ("promote", "every step passed".to_owned()),
        Decision::Rollback(reason) => ("rollback", reason.clone()),
    };
    entry.state.last_decision = label.to_owned();
    entry.state.last_reason = reason.clone();
    // An ended rollout's waits say nothing new.
    if label != "wait" || entry.state.phase == CanaryPhase::Progressing {
        let weight = entry.weight();
        entry.state.remember(weight);
    }
    metrics.canary_decision(name, label);
    metrics.set_rollout_phase(name, phase_label(&entry.state));
    let versions = entry.model.as_ref().map(|(v, _)| (v.stable, v.candidate));
    let boundary = entry.state.boundary_ms;
    match decision {
        Decision::Wait(_) => {}
        Decision::FleetStart => {
            info!(rollout = %name, ?versions, ?boundary, "Every replica has the candidate; the fleet's rollout starts.");
            push_weight(
                turn,
                model,
                name,
                entry.weight(),
                entry.state.stage == Stage::Shadow,
            );
        }
        Decision::Hold(_) | Decision::FleetHold(_) => {
            warn!(rollout = %name, ?versions, ?boundary, %reason, "Rollout check failed or unreadable; holding.")
        }
        Decision::Rollback(_) => {
            warn!(rollout = %name, ?versions, ?boundary, %reason, "Rollout rolled back: all traffic to the stable version.");
            match model {
                Some(rollout) => turn.updates.push(Update::End {
                    model: name.clone(),
                    candidate: rollout.candidate,
                    promoted: false,
                    reason,
                    evidence: evidence(&entry.state),
                }),
                None => {
                    metrics.observe_rollout(name, "rolled_back", entry.started.elapsed());
                    metrics.set_rollout_outcome(name, &entry.candidate, "rolled_back");
                    turn.updates.push(Update::Weight {
                        endpoint: name.clone(),
                        percent: 0.0,
                    })
                }
            }
        }
        Decision::StepUp(to) | Decision::ShadowPassed(to) => {
            info!(rollout = %name, ?versions, ?boundary, weight = to, decision = label, "Rollout stepped up.");
            push_weight(turn, model, name, to, false);
        }
        Decision::Promote => {
            info!(rollout = %name, ?versions, ?boundary, "Rollout promoted: the candidate takes all traffic.");
            match model {
                Some(rollout) => turn.updates.push(Update::End {
                    model: name.clone(),
                    candidate: rollout.candidate,
                    promoted: true,
                    reason,
                    evidence: evidence(&entry.state),
                }),
                None => {
                    metrics.observe_rollout(name, "promoted", entry.started.elapsed());
                    metrics.set_rollout_outcome(name, &entry.candidate, "promoted");
                    turn.updates.push(Update::Weight {
                        endpoint: name.clone(),
                        percent: 100.0,
                    })
                }
            }
        }
    }
    if entry.state.phase == CanaryPhase::Progressing {
        report_position(metrics, name, entry);
    }
}

/// A rollout's new candidate weight (and whether its shadow copies go on).
fn push_weight(
    turn: &mut Turn<'_>,
    model: Option<&Arc<ModelRollout>>,
    name: &str,
    percent: f64,
    shadow: bool,
) {
    turn.updates.push(match model {
        Some(rollout) => Update::Stage {
            model: name.to_owned(),
            candidate: rollout.candidate,
            percent,
            shadow,
        },
        None => Update::Weight {
            endpoint: name.to_owned(),
            percent,
        },
    });
}

/// This replica's place in the rollout, for the fleet to read.
fn report_position(metrics: &Metrics, name: &str, entry: &RolloutEntry) {
    let position = fleet::position_of(&entry.state, entry.waiting_for_fleet);
    metrics.set_rollout_position(
        name,
        &entry.candidate,
        position.position,
        position.failed_checks,
    );
}

async fn apply(
    catalog: &CatalogStore,
    metrics: &Metrics,
    memory: &Memory,
    sources: &[Arc<dyn Source>],
    update: Update,
) {
    match update {
        Update::Weight { endpoint, percent } => {
            set_weight(catalog, metrics, &endpoint, percent).await
        }
        Update::Stage {
            model,
            candidate,
            percent,
            shadow,
        } => set_model_stage(catalog, metrics, &model, candidate, percent, shadow).await,
        Update::End {
            model,
            candidate,
            promoted,
            reason,
            evidence,
        } => {
            let ended = end_model_rollout(
                catalog, metrics, memory, &model, candidate, promoted, &reason,
            )
            .await;
            if let Some((source, previous)) = ended
                && let Some(source) = sources.get(source).cloned()
            {
                let record = RolloutRecord {
                    version: candidate,
                    previous,
                    promoted,
                    reason,
                    evidence,
                };
                tokio::spawn(record_in_source(source, model, record));
            }
        }
    }
}

/// Moves a model rollout's candidate weight (and stops its shadow copies).
async fn set_model_stage(
    catalog: &CatalogStore,
    metrics: &Metrics,
    model: &str,
    candidate: u64,
    percent: f64,
    shadow: bool,
) {
    let writer = catalog.writer().await;
    let current = writer.current();
    let Some(entry) = current.models.get(model) else {
        return;
    };
    let Some(rollout) = entry.rollout.as_ref().filter(|r| r.candidate == candidate) else {
        return;
    };
    let mut endpoint = (*rollout.endpoint).clone();
    set_canary_weight(&mut endpoint, &rollout.policy.canary, percent);
    if !shadow {
        endpoint.shadow = None;
    }
    for variant in &endpoint.variants {
        metrics.set_route_weight(model, &variant.name, variant.weight);
    }
    let mut rollout = (**rollout).clone();
    rollout.endpoint = Arc::new(endpoint);
    let mut entry = entry.clone();
    entry.rollout = Some(Arc::new(rollout));
    let mut next = (*current).clone();
    next.models.insert(model.to_owned(), entry);
    writer.publish(next);
}

/// A rollout's decisions that moved it (the last ones that fit MLflow's tag
/// size), as JSON.
fn evidence(state: &CanaryState) -> String {
    let events: Vec<&crate::control::canary::CanaryEvent> = state
        .history
        .iter()
        .filter(|e| e.decision != "wait")
        .collect();
    let mut from = 0;
    loop {
        let text = serde_json::json!({
            "outcome": phase_label(state),
            "reason": state.last_reason,
            "decisions": &events[from..],
        })
        .to_string();
        if text.len() <= RECORD_LIMIT || from == events.len() {
            return text;
        }
        from += 1;
    }
}

/// MLflow's limit on a tag's value (5,000 characters).
const RECORD_LIMIT: usize = 5000;

/// Records a rollout's outcome in the model's source; retried a few times,
/// then said in the log (what serves does not depend on it).
async fn record_in_source(source: Arc<dyn Source>, model: String, record: RolloutRecord) {
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=5 {
        match source.record_rollout(&model, &record).await {
            Ok(()) => return,
            Err(err) if attempt == 5 => {
                warn!(%model, version = record.version, error = %err, "Could not record the rollout's outcome in its source.");
            }
            Err(err) => {
                warn!(%model, version = record.version, error = %err, attempt, "Recording the rollout's outcome failed; retrying.");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// Ends a model's rollout in the catalog: promoted, the candidate becomes the
/// stable version (the previous one stays loaded for `keep_previous`);
/// rolled back, the candidate leaves with the reason and stays out until its
/// content changes.
async fn end_model_rollout(
    catalog: &CatalogStore,
    metrics: &Metrics,
    memory: &Memory,
    model: &str,
    candidate: u64,
    promoted: bool,
    reason: &str,
) -> Option<(usize, u64)> {
    let writer = catalog.writer().await;
    let current = writer.current();
    let entry = current.models.get(model)?;
    let rollout = entry.rollout.clone().filter(|r| r.candidate == candidate)?;
    let mut entry = entry.clone();
    entry.rollout = None;
    let outcome = if promoted {
        entry.stable = Some(candidate);
        entry.default_version = Some(candidate);
        entry.retained.insert(
            rollout.stable,
            Instant::now() + rollout.policy.keep_previous,
        );
        metrics.set_route_weight(model, crate::config::rollout::STABLE, 0.0);
        metrics.set_route_weight(model, crate::config::rollout::CANDIDATE, 100.0);
        info!(
            model,
            version = candidate,
            previous = rollout.stable,
            kept_for = ?rollout.policy.keep_previous,
            after = ?rollout.started.elapsed(),
            "Version promoted: it serves every unversioned request."
        );
        "promoted"
    } else {
        entry.versions.remove(&candidate);
        entry
            .failed
            .insert(candidate, format!("rolled back: {reason}"));
        entry
            .rolled_back
            .insert(candidate, (rollout.fingerprint.clone(), reason.to_owned()));
        entry.default_version = Some(rollout.stable);
        metrics.set_model_ready(model, &candidate.to_string(), false);
        metrics.set_route_weight(model, crate::config::rollout::STABLE, 100.0);
        metrics.set_route_weight(model, crate::config::rollout::CANDIDATE, 0.0);
        warn!(
            model,
            version = candidate,
            stable = rollout.stable,
            %reason,
            after = ?rollout.started.elapsed(),
            "Version rolled back: it drains and unloads, and is not loaded again until its content changes."
        );
        "rolled_back"
    };
    metrics.observe_rollout(model, outcome, rollout.started.elapsed());
    metrics.set_rollout_outcome(model, &candidate.to_string(), outcome);
    memory.save(
        model,
        Remembered {
            stable: entry.stable,
            rolled_back: entry.rolled_back.clone(),
        },
    );
    let source = entry.source;
    let mut next = (*current).clone();
    next.models.insert(model.to_owned(), entry);
    writer.publish(next);
    source.map(|s| (s, rollout.stable))
}

impl Rollouts {
    /// `fleet`: decide from Prometheus's fleet-wide numbers (fleet mode).
    pub fn new(
        memory: Memory,
        fleet: Option<Prometheus>,
        sources: Vec<Arc<dyn Source>>,
    ) -> Arc<Self> {
        Arc::new(Rollouts {
            entries: Mutex::default(),
            memory,
            fleet: fleet.map(Arc::new),
            sources,
        })
    }

    /// Every rollout, by endpoint or model name.
    pub fn rollouts(&self) -> BTreeMap<String, RolloutView> {
        self.entries
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .map(|(name, e)| {
                        (
                            name.clone(),
                            RolloutView {
                                policy: e.policy.clone(),
                                shadow: e.shadow.clone(),
                                model: e.model.as_ref().map(|(v, _)| v.clone()),
                                state: e.state.clone(),
                                fleet: self
                                    .fleet
                                    .is_some()
                                    .then_some((e.waiting_for_fleet, e.last_boundary)),
                                canary_weight: e.weight(),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Status of every rollout, by name.
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

    /// An operator's command for the rollout named `name`; returns its new state.
    /// A model's rollout that is promoted or aborted ends at the controller's next turn.
    /// In fleet mode a command changes this replica only: refused unless
    /// `force` (a forced promote or abort is adopted by every replica at the
    /// next boundary, through `switchyard_rollout_outcome`).
    pub fn command(
        &self,
        name: &str,
        action: CanaryCommand,
        force: bool,
        metrics: &Metrics,
    ) -> Result<CanaryState, crate::error::ApiError> {
        use crate::error::{ApiError, ErrorKind};
        if self.fleet.is_some() && !force {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "fleet mode: every replica moves `{name}` from Prometheus's numbers, and a command here changes this replica only. \
                     `promote` or `abort` with ?force=true ends it here, and every other replica adopts that outcome at the next boundary; \
                     `pause` with ?force=true holds this replica alone (it catches up with the fleet on `resume`). \
                     To change the policy for all, change the model's config.yaml (or the route file) that every replica reads"
                ),
            ));
        }
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| ApiError::internal("the rollout state is poisoned"))?;
        let entry = entries.get_mut(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "`{name}` has no rollout (a `canary:` policy in the route file, or a model's `rollout:` policy with a new version arriving)"
            ))
        })?;
        command(&mut entry.state, action)
            .map_err(|reason| ApiError::new(ErrorKind::Conflict, reason))?;
        let weight = entry.weight();
        entry.state.remember(weight);
        entry.last_check = Instant::now();
        // A model's rollout is timed when it ends in the catalog.
        if entry.model.is_none() && entry.ended() {
            let outcome = if entry.state.phase == CanaryPhase::Promoted {
                "promoted"
            } else {
                "rolled_back"
            };
            metrics.observe_rollout(name, outcome, entry.started.elapsed());
            metrics.set_rollout_outcome(name, &entry.candidate, outcome);
        }
        metrics.canary_decision(name, action.label());
        metrics.set_rollout_phase(name, phase_label(&entry.state));
        info!(
            rollout = name,
            action = action.label(),
            "Rollout changed by an operator."
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
        metrics.set_rollout_phase(endpoint, phase_label(&entry.state));
        Ok(())
    }
}

/// Sets an endpoint's variant weights by hand (the control API), as one
/// catalog swap. They hold until the route file changes. A progressing
/// canary rollout would overwrite them: refused unless `force` (which pauses it).
pub async fn set_weights(
    catalog: &CatalogStore,
    rollouts: &Rollouts,
    metrics: &Metrics,
    endpoint: &str,
    weights: &BTreeMap<String, f64>,
    force: bool,
) -> Result<(), crate::error::ApiError> {
    use crate::error::{ApiError, ErrorKind};
    let writer = catalog.writer().await;
    let current = writer.current();
    let existing = current.routes.endpoints.get(endpoint).ok_or_else(|| {
        if current
            .models
            .get(endpoint)
            .is_some_and(|e| e.rollout.is_some())
        {
            ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "`{endpoint}` is a model rolling out a new version; its weights follow the rollout (POST /v2/endpoints/{endpoint}/canary/pause, resume, abort or promote)"
                ),
            )
        } else {
            ApiError::not_found(format!("unknown endpoint `{endpoint}`"))
        }
    })?;
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
    if rollouts.fleet.is_some() && !force {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "fleet mode: weights set here change this replica only, and replicas would split traffic differently; \
                 change `{endpoint}` in the route file every replica reads (its ConfigMap), or pass \"force\": true"
            ),
        ));
    }
    rollouts
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
    updated: Endpoint,
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
