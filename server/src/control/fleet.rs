//! Fleet mode: one rollout decision for every replica, with no consensus of
//! our own. Every replica reads the fleet's numbers from Prometheus with
//! instant queries at the same boundaries (multiples of the stage's interval
//! since the Unix epoch, read `settle` after each so every scrape up to it
//! has landed). What Prometheus holds for a past instant is the same for
//! every reader, so the pure rules in `control::canary` decide the same on
//! every replica.
//!
//! `assess` (pure) says whether a boundary's reading can be judged: every
//! target up and reporting this rollout's candidate; the fleet's place is the
//! most advanced one any replica reports (a replica that missed a boundary or
//! joined late catches up); an outcome any replica reports is adopted.
//! Anything less holds: no weight moves on partial data. `Prometheus::read`
//! makes the queries.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::control::canary::{CanaryState, Stage};
use crate::serve::agreement::{Agreement, OutputAgreement};
use crate::serve::traffic::WindowSnapshot;

/// Fleet mode's settings (`--fleet-prometheus` and the flags beside it).
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Prometheus's base URL (`http://prometheus:9090`).
    pub prometheus: String,
    /// Label matchers selecting this fleet's scrape targets (`job="switchyard"`).
    pub selector: String,
    /// How long after a boundary its data is read (more than a scrape
    /// interval plus a scrape's duration).
    pub settle: Duration,
    /// The most one query may take.
    pub timeout: Duration,
}

/// A replica's place in a rollout as it reports it
/// (`switchyard_rollout_position`, `switchyard_rollout_failed_checks`);
/// ordered by progress, then by failed checks (seen more of the boundaries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Position {
    pub position: u32,
    pub failed_checks: u32,
}

/// Loaded, but not yet every replica has the candidate: no live share.
pub const WAITING: u32 = 0;
pub const SHADOW: u32 = 1;
/// Canary step `i` is `CANARY + i`.
pub const CANARY: u32 = 2;

/// Where `state` stands as a position.
pub fn position_of(state: &CanaryState, waiting: bool) -> Position {
    let position = match (waiting, state.stage) {
        (true, _) => WAITING,
        (false, Stage::Shadow) => SHADOW,
        (false, Stage::Canary) => CANARY + u32::try_from(state.step).unwrap_or(u32::MAX - CANARY),
    };
    Position {
        position,
        failed_checks: state.failed_checks,
    }
}

/// Moves `state` to the fleet's `position` (clamped to the policy's steps).
pub fn adopt(state: &mut CanaryState, position: Position, steps: usize, has_shadow: bool) {
    match position.position {
        WAITING => return,
        SHADOW if has_shadow => {
            state.stage = Stage::Shadow;
            state.step = 0;
        }
        SHADOW => {
            state.stage = Stage::Canary;
            state.step = 0;
        }
        n => {
            state.stage = Stage::Canary;
            state.step = ((n - CANARY) as usize).min(steps.saturating_sub(1));
        }
    }
    state.failed_checks = position.failed_checks;
}

/// What one rollout's boundary reading is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub rollout: String,
    /// The candidate label replicas report (a model's version; a route-file canary's variant).
    pub candidate: String,
    /// Variant labels of the stable and canary sides.
    pub stable: String,
    pub canary: String,
    pub boundary_ms: u64,
    pub window: Duration,
}

/// What a boundary's queries found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Every target the selector matches: instance → up.
    pub targets: BTreeMap<String, bool>,
    /// Targets whose last scrape is older than the window (Prometheus was
    /// away, or stopped scraping them): their numbers are not known.
    pub stale: Vec<String>,
    /// Each instance's rollout of this name: (candidate, position).
    pub reports: BTreeMap<String, (String, Position)>,
    /// Outcomes replicas report for this candidate.
    pub outcomes: Vec<String>,
    pub stable: WindowSnapshot,
    pub canary: WindowSnapshot,
    pub shadow: WindowSnapshot,
    pub agreement: Agreement,
}

/// What a reading allows.
#[derive(Debug, Clone, PartialEq)]
pub enum Assessment {
    /// Incomplete: nothing moves.
    Hold(String),
    /// A replica ended this rollout; every replica follows.
    Ended { promoted: bool },
    /// Complete: judge from the fleet's place.
    Judge(Position),
}

/// Whether a reading is complete enough to judge (pure).
pub fn assess(reading: &Reading, candidate: &str) -> Assessment {
    // A rollback anywhere wins over a promotion: never keep what failed somewhere.
    if reading.outcomes.iter().any(|o| o == "rolled_back") {
        return Assessment::Ended { promoted: false };
    }
    if reading.outcomes.iter().any(|o| o == "promoted") {
        return Assessment::Ended { promoted: true };
    }
    if reading.targets.is_empty() {
        return Assessment::Hold("Prometheus has no target matching the fleet selector".into());
    }
    let down: Vec<&str> = reading
        .targets
        .iter()
        .filter(|(_, up)| !**up)
        .map(|(instance, _)| instance.as_str())
        .collect();
    if !reading.stale.is_empty() {
        return Assessment::Hold(format!(
            "no scrape of {} in the interval before the boundary",
            reading.stale.join(", ")
        ));
    }
    if !down.is_empty() {
        return Assessment::Hold(format!(
            "{} of {} replicas down at the boundary: {}",
            down.len(),
            reading.targets.len(),
            down.join(", ")
        ));
    }
    let mut fleet = Position::default();
    for instance in reading.targets.keys() {
        match reading.reports.get(instance) {
            None => {
                return Assessment::Hold(format!(
                    "replica {instance} does not report this rollout yet"
                ));
            }
            Some((theirs, _)) if theirs != candidate => {
                return Assessment::Hold(format!(
                    "replica {instance} rolls out candidate {theirs}, not {candidate}"
                ));
            }
            Some((_, position)) => fleet = fleet.max(*position),
        }
    }
    Assessment::Judge(fleet)
}

/// The instant query client.
pub struct Prometheus {
    client: reqwest::Client,
    config: FleetConfig,
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct QueryData {
    #[serde(default)]
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.metric.get(name).map_or("", String::as_str)
    }

    /// The value; NaN (no data in a quantile) reads as 0.
    fn number(&self) -> f64 {
        self.value
            .1
            .parse::<f64>()
            .ok()
            .filter(|v| !v.is_nan())
            .unwrap_or(0.0)
    }

    fn count(&self) -> u64 {
        self.number().max(0.0).round() as u64
    }
}

/// A PromQL string literal.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Prometheus {
    pub fn new(config: FleetConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| format!("the Prometheus client: {e}"))?;
        Ok(Prometheus { client, config })
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// One instant query evaluated at `at_ms`.
    async fn query(&self, promql: &str, at_ms: u64) -> Result<Vec<Sample>, String> {
        let url = format!(
            "{}/api/v1/query",
            self.config.prometheus.trim_end_matches('/')
        );
        let time = format!("{}.{:03}", at_ms / 1000, at_ms % 1000);
        let response = self
            .client
            .get(&url)
            .query(&[("query", promql), ("time", time.as_str())])
            .send()
            .await
            .map_err(|e| format!("Prometheus at {}: {e}", self.config.prometheus))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("Prometheus at {}: {e}", self.config.prometheus))?;
        let body: QueryResponse = serde_json::from_slice(&bytes)
            .map_err(|e| format!("Prometheus answered {status} that is not a query result: {e}"))?;
        if body.status != "success" {
            return Err(format!(
                "Prometheus refused `{promql}`: {}",
                body.error.unwrap_or_default()
            ));
        }
        Ok(body.data.map(|d| d.result).unwrap_or_default())
    }

    /// Reads everything a rollout's boundary is judged on.
    pub async fn read(&self, ask: &Ask) -> Result<Reading, String> {
        let at = ask.boundary_ms;
        let selector = &self.config.selector;
        let sep = if selector.trim().is_empty() { "" } else { "," };
        let rollout = quoted(&ask.rollout);
        let series = |metric: &str, extra: &str| format!("{metric}{{{selector}{sep}{extra}}}");
        let window = format!("[{}ms]", ask.window.as_millis().max(1));
        let on_endpoint = format!("endpoint={rollout}");
        let increase = |metric: &str, by: &str| {
            format!(
                "sum by ({by}) (increase({}{window}))",
                series(metric, &on_endpoint)
            )
        };
        let queries = [
            format!("up{{{selector}}}"),
            format!("timestamp(up{{{selector}}})"),
            series("switchyard_rollout_position", &format!("rollout={rollout}")),
            series(
                "switchyard_rollout_failed_checks",
                &format!("rollout={rollout}"),
            ),
            format!(
                "{} == 1",
                series(
                    "switchyard_rollout_outcome",
                    &format!("rollout={rollout},candidate={}", quoted(&ask.candidate))
                )
            ),
            increase("switchyard_endpoint_requests_total", "variant, outcome"),
            format!(
                "histogram_quantile(0.99, {})",
                increase(
                    "switchyard_endpoint_request_duration_seconds_bucket",
                    "variant, le"
                )
            ),
            increase("switchyard_shadow_requests_compared_total", "result"),
            increase("switchyard_shadow_comparisons_total", "output, result"),
            increase("switchyard_shadow_argmax_rows_total", "output, result"),
            increase("switchyard_shadow_max_abs_difference_bucket", "output, le"),
            increase("switchyard_shadow_mean_abs_difference_sum", "output"),
            increase("switchyard_shadow_mean_abs_difference_count", "output"),
        ];
        let answers =
            futures::future::try_join_all(queries.iter().map(|q| self.query(q, at))).await?;
        let [
            up,
            scraped,
            positions,
            failed,
            outcomes,
            requests,
            p99,
            compared,
            comparisons,
            argmax,
            max_buckets,
            mean_sum,
            mean_count,
        ]: [Vec<Sample>; 13] = answers
            .try_into()
            .map_err(|_| "a query went unanswered".to_owned())?;

        let mut reading = Reading::default();
        for s in &up {
            reading
                .targets
                .insert(s.label("instance").to_owned(), s.number() == 1.0);
        }
        let oldest = at.saturating_sub(u64::try_from(ask.window.as_millis()).unwrap_or(u64::MAX));
        for s in &scraped {
            if (s.number() * 1000.0) < oldest as f64 {
                reading.stale.push(s.label("instance").to_owned());
            }
        }
        for s in &positions {
            let failed_checks = failed
                .iter()
                .find(|f| {
                    f.label("instance") == s.label("instance")
                        && f.label("candidate") == s.label("candidate")
                })
                .map_or(0, |f| u32::try_from(f.count()).unwrap_or(u32::MAX));
            let position = Position {
                position: u32::try_from(s.count()).unwrap_or(u32::MAX),
                failed_checks,
            };
            // One rollout per name per replica; a stale second series loses to the newest place.
            let entry = reading
                .reports
                .entry(s.label("instance").to_owned())
                .or_insert((s.label("candidate").to_owned(), position));
            if s.label("candidate") == ask.candidate {
                *entry = (ask.candidate.clone(), position);
            }
        }
        reading.outcomes = outcomes
            .iter()
            .map(|s| s.label("outcome").to_owned())
            .collect();
        let mut windows: BTreeMap<&str, WindowSnapshot> = BTreeMap::new();
        for s in &requests {
            let window = windows.entry(s.label("variant")).or_default();
            match s.label("outcome") {
                "success" => window.ok += s.count(),
                _ => window.failed += s.count(),
            }
        }
        for s in &p99 {
            if let Some(window) = windows.get_mut(s.label("variant")) {
                window.p99_ms = s.number() * 1000.0;
            }
        }
        let side = |variant: &str| windows.get(variant).copied().unwrap_or_default();
        reading.stable = side(&ask.stable);
        reading.canary = side(&ask.canary);
        reading.shadow = side("shadow");
        reading.agreement = agreement(
            &compared,
            &comparisons,
            &argmax,
            &max_buckets,
            &mean_sum,
            &mean_count,
        );
        Ok(reading)
    }
}

/// The fleet's agreement over a window, from the shadow series' increases.
/// The largest difference is bounded by its histogram: the upper edge of the
/// lowest bucket holding every comparison (a conservative reading).
fn agreement(
    compared: &[Sample],
    comparisons: &[Sample],
    argmax: &[Sample],
    max_buckets: &[Sample],
    mean_sum: &[Sample],
    mean_count: &[Sample],
) -> Agreement {
    let mut total = Agreement::default();
    for s in compared {
        let n = s.count();
        total.compared += n;
        if s.label("result") == "agree" {
            total.agreed += n;
        }
    }
    let mut outputs: BTreeMap<String, OutputAgreement> = BTreeMap::new();
    for s in comparisons {
        let output = outputs.entry(s.label("output").to_owned()).or_default();
        let n = s.count();
        output.compared += n;
        match s.label("result") {
            "agree" => output.agreed += n,
            "mismatch" => output.mismatched += n,
            _ => {}
        }
    }
    for s in argmax {
        let output = outputs.entry(s.label("output").to_owned()).or_default();
        let n = s.count();
        output.argmax_rows += n;
        if s.label("result") == "same" {
            output.argmax_same += n;
        }
    }
    let mut buckets: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for s in max_buckets {
        let le = match s.label("le") {
            "+Inf" => f64::INFINITY,
            other => other.parse().unwrap_or(f64::INFINITY),
        };
        buckets
            .entry(s.label("output"))
            .or_default()
            .push((le, s.number()));
    }
    for (name, mut edges) in buckets {
        edges.sort_by(|a, b| a.0.total_cmp(&b.0));
        let all = edges.last().map_or(0.0, |e| e.1);
        if all < 0.5 {
            continue;
        }
        let bound = edges
            .iter()
            .find(|(_, cumulative)| *cumulative >= all - 0.5)
            .map_or(f64::INFINITY, |(le, _)| *le);
        if let Some(output) = outputs.get_mut(name) {
            output.max_abs_diff = Some(bound);
        }
    }
    for s in mean_count {
        let count = s.number();
        let sum = mean_sum
            .iter()
            .find(|m| m.label("output") == s.label("output"))
            .map_or(0.0, Sample::number);
        if count >= 0.5
            && let Some(output) = outputs.get_mut(s.label("output"))
        {
            output.mean_abs_diff = Some(sum / count);
        }
    }
    // Outputs that saw nothing this window are not judged.
    outputs.retain(|_, o| o.compared > 0 || o.argmax_rows > 0);
    total.outputs = outputs;
    total
}

/// The boundary (ms since the epoch) a rollout judged every `interval` may
/// read at `now_ms`: the latest multiple of the interval `settle` ago.
pub fn due_boundary(now_ms: u64, interval: Duration, settle: Duration) -> u64 {
    let interval = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let settle = u64::try_from(settle.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_sub(settle) / interval * interval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(targets: &[(&str, bool)], reports: &[(&str, &str, u32, u32)]) -> Reading {
        Reading {
            targets: targets
                .iter()
                .map(|(i, up)| ((*i).to_owned(), *up))
                .collect(),
            reports: reports
                .iter()
                .map(|(i, c, p, f)| {
                    (
                        (*i).to_owned(),
                        (
                            (*c).to_owned(),
                            Position {
                                position: *p,
                                failed_checks: *f,
                            },
                        ),
                    )
                })
                .collect(),
            ..Reading::default()
        }
    }

    #[test]
    fn a_complete_fleet_is_judged_from_its_most_advanced_replica() {
        let r = reading(
            &[("a", true), ("b", true), ("c", true)],
            &[("a", "2", 2, 0), ("b", "2", 3, 0), ("c", "2", 3, 1)],
        );
        assert_eq!(
            assess(&r, "2"),
            Assessment::Judge(Position {
                position: 3,
                failed_checks: 1
            })
        );
    }

    #[test]
    fn anything_partial_holds() {
        let down = reading(&[("a", true), ("b", false)], &[("a", "2", 1, 0)]);
        assert!(matches!(assess(&down, "2"), Assessment::Hold(r) if r.contains("b")));
        let missing = reading(&[("a", true), ("b", true)], &[("a", "2", 1, 0)]);
        assert!(matches!(assess(&missing, "2"), Assessment::Hold(r) if r.contains("replica b")));
        let other = reading(
            &[("a", true), ("b", true)],
            &[("a", "2", 1, 0), ("b", "3", 1, 0)],
        );
        assert!(matches!(assess(&other, "2"), Assessment::Hold(r) if r.contains("candidate 3")));
        assert!(matches!(
            assess(&Reading::default(), "2"),
            Assessment::Hold(_)
        ));
        let mut stale = reading(&[("a", true)], &[("a", "2", 1, 0)]);
        stale.stale = vec!["a".into()];
        assert!(matches!(assess(&stale, "2"), Assessment::Hold(r) if r.contains("no scrape of a")));
    }

    #[test]
    fn an_outcome_anywhere_is_adopted_and_a_rollback_wins() {
        let mut r = reading(&[("a", true)], &[]);
        r.outcomes = vec!["promoted".into()];
        assert_eq!(assess(&r, "2"), Assessment::Ended { promoted: true });
        r.outcomes.push("rolled_back".into());
        assert_eq!(assess(&r, "2"), Assessment::Ended { promoted: false });
    }

    #[test]
    fn positions_round_trip_through_the_state() {
        let mut state = CanaryState::new(true);
        assert_eq!(position_of(&state, true).position, WAITING);
        assert_eq!(position_of(&state, false).position, SHADOW);
        adopt(
            &mut state,
            Position {
                position: CANARY + 1,
                failed_checks: 1,
            },
            3,
            true,
        );
        assert_eq!(
            (state.stage, state.step, state.failed_checks),
            (Stage::Canary, 1, 1)
        );
        assert_eq!(position_of(&state, false).position, CANARY + 1);
        // Beyond the steps: the last one.
        adopt(
            &mut state,
            Position {
                position: 40,
                failed_checks: 0,
            },
            3,
            true,
        );
        assert_eq!(state.step, 2);
    }

    #[test]
    fn boundaries_are_aligned_to_the_epoch_after_the_settle_time() {
        let second = Duration::from_secs(1);
        assert_eq!(due_boundary(10_400, 3 * second, second), 9_000);
        assert_eq!(due_boundary(10_999, 3 * second, second), 9_000);
        assert_eq!(due_boundary(12_000, 3 * second, second), 9_000);
        assert_eq!(due_boundary(13_000, 3 * second, second), 12_000);
    }

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            metric: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value: (0.0, value.to_string()),
        }
    }

    #[test]
    fn the_fleets_agreement_is_added_up_from_the_shadow_series() {
        let compared = [
            sample(&[("result", "agree")], 18.0),
            sample(&[("result", "disagree")], 2.0),
        ];
        let comparisons = [
            sample(&[("output", "y"), ("result", "agree")], 18.0),
            sample(&[("output", "y"), ("result", "disagree")], 1.6),
            sample(&[("output", "y"), ("result", "mismatch")], 0.4),
        ];
        let argmax = [
            sample(&[("output", "y"), ("result", "same")], 30.0),
            sample(&[("output", "y"), ("result", "different")], 10.0),
        ];
        let buckets = [
            sample(&[("output", "y"), ("le", "1e-05")], 10.0),
            sample(&[("output", "y"), ("le", "0.0001")], 20.0),
            sample(&[("output", "y"), ("le", "+Inf")], 20.0),
        ];
        let sum = [sample(&[("output", "y")], 0.001)];
        let count = [sample(&[("output", "y")], 20.0)];
        let a = agreement(&compared, &comparisons, &argmax, &buckets, &sum, &count);
        assert_eq!((a.compared, a.agreed), (20, 18));
        let y = &a.outputs["y"];
        assert_eq!((y.compared, y.agreed, y.mismatched), (20, 18, 0));
        assert_eq!((y.argmax_same, y.argmax_rows), (30, 40));
        assert_eq!(y.max_abs_diff, Some(1e-4));
        assert!((y.mean_abs_diff.unwrap() - 5e-5).abs() < 1e-12);
    }

    #[test]
    fn promql_strings_are_escaped() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
