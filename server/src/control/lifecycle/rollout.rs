//! What a rollout policy changes in one model's reconcile pass: which
//! version is stable (it keeps serving whatever the version policy says),
//! which newer loaded version is the candidate (a rollout starts, or the one
//! in progress goes on), and which previous stable versions stay loaded after
//! a promotion. The controller (`control::canary`) moves the rollout along and
//! ends it; this only starts, continues or drops it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use crate::config::rollout::RolloutPolicy;
use crate::control::source::VersionListing;
use crate::serve::catalog::{ModelEntry, ModelRollout};
use crate::serve::model::ModelVersion;

/// The fields of the next entry a rollout policy decides.
#[derive(Debug, Default)]
pub(super) struct Decided {
    pub stable: Option<u64>,
    pub rollout: Option<Arc<ModelRollout>>,
    pub retained: BTreeMap<u64, Instant>,
}

pub(super) struct Pass<'a> {
    pub model: &'a str,
    pub policy: &'a Arc<RolloutPolicy>,
    pub current: Option<&'a ModelEntry>,
    /// What served before this pass.
    pub previous: &'a BTreeMap<u64, Arc<ModelVersion>>,
    /// The versions this pass loaded or kept (the version policy's); the
    /// stable and retained ones are added back here.
    pub versions: &'a mut BTreeMap<u64, Arc<ModelVersion>>,
    pub listed: &'a BTreeMap<u64, VersionListing>,
    /// The model's registry alias moved to this version since the last pass:
    /// an operator's choice, taken at once.
    pub alias_moved_to: Option<u64>,
    /// The stable version before a restart (the rollout memory).
    pub remembered_stable: Option<u64>,
    pub now: Instant,
}

pub(super) fn decide(pass: Pass<'_>) -> Decided {
    let Pass {
        model,
        policy,
        current,
        previous,
        versions,
        listed,
        alias_moved_to,
        remembered_stable,
        now,
    } = pass;
    let previous_stable = current
        .and_then(|e| e.stable)
        .filter(|s| previous.contains_key(s));
    let stable = match (alias_moved_to, previous_stable) {
        (Some(moved), _) if versions.contains_key(&moved) => moved,
        (_, Some(stable)) => stable,
        // After a restart: the version that had earned its traffic (a newer
        // one starts its rollout again).
        (_, None) if remembered_stable.is_some_and(|s| versions.contains_key(&s)) => {
            remembered_stable.unwrap_or_default()
        }
        // First load: whatever loads serves at once (there is nothing to compare with).
        _ => match versions.keys().next_back() {
            Some(&highest) => highest,
            None => return Decided::default(),
        },
    };
    if let Some(serving) = previous.get(&stable) {
        versions.entry(stable).or_insert_with(|| serving.clone());
    }
    let mut retained = BTreeMap::new();
    for (&version, &until) in current.map(|e| &e.retained).into_iter().flatten() {
        if until > now
            && version != stable
            && let Some(serving) = previous.get(&version)
        {
            versions.entry(version).or_insert_with(|| serving.clone());
            retained.insert(version, until);
        }
    }
    let candidate = versions
        .keys()
        .copied()
        .rfind(|v| *v > stable && !retained.contains_key(v));
    let rollout = candidate.map(|candidate| {
        let fingerprint = listed
            .get(&candidate)
            .map(|l| l.fingerprint.clone())
            .unwrap_or_default();
        let going_on = current.and_then(|e| e.rollout.as_ref()).filter(|r| {
            r.candidate == candidate
                && r.stable == stable
                && r.fingerprint == fingerprint
                && r.policy == *policy
                && previous
                    .get(&candidate)
                    .zip(versions.get(&candidate))
                    .is_some_and(|(a, b)| Arc::ptr_eq(a, b))
        });
        match going_on {
            Some(rollout) => rollout.clone(),
            None => {
                info!(
                    model,
                    stable,
                    candidate,
                    shadow = policy.shadow.is_some(),
                    "Rollout started: the new version earns its traffic before it serves."
                );
                Arc::new(ModelRollout::start(
                    model,
                    stable,
                    candidate,
                    fingerprint,
                    policy.clone(),
                ))
            }
        }
    });
    Decided {
        stable: Some(stable),
        rollout,
        retained,
    }
}
