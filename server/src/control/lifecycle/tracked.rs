//! What the reconciler remembers about one model between passes, and the
//! decisions it makes from that memory: whether a version's content is new,
//! whether a failure is still backing off, whether a local file has settled.
//! Pure (time comes in as `now`), so every rule is unit-tested.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::file::ConfigText;

/// First retry delay after a failure; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Retry delay for a remote model whose upstreams are not up yet.
const WAITING_RETRY: Duration = Duration::from_secs(1);

pub(super) fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF)
}

#[derive(Debug, Clone)]
struct Failure {
    fingerprint: String,
    reason: String,
    attempts: u32,
    retry_at: Instant,
}

/// One model's memory.
#[derive(Debug, Default)]
pub(super) struct Tracked {
    /// Fingerprint of each loaded version.
    loaded: BTreeMap<u64, String>,
    /// The config file the loaded versions were built with.
    config: Option<(String, ConfigText)>,
    failures: BTreeMap<u64, Failure>,
    config_failure: Option<Failure>,
    /// Versions seen once with this fingerprint, waiting to be seen unchanged again.
    settling: BTreeMap<u64, String>,
    /// The version the model's registry alias named in the last pass.
    pub(super) alias_seen: Option<u64>,
}

/// What to do with one desired version in this pass.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum VersionStep {
    /// Its content and config are what serves: keep the serving version.
    Keep,
    /// It failed with this content and is still backing off.
    StillFailing(String),
    /// First sighting of this content in a folder that may still be copying.
    Settle,
    /// Fetch, load and warm it up.
    Load,
}

impl Tracked {
    /// Whether the config differs from the one the loaded versions were built with.
    pub(super) fn config_changed(&self, config: &Option<(String, ConfigText)>) -> bool {
        self.config != *config
    }

    /// A config that failed and is still backing off (`None` once it may be retried).
    pub(super) fn config_backing_off(&self, eager: bool, now: Instant) -> Option<String> {
        self.config_failure
            .as_ref()
            .filter(|f| !eager && f.retry_at > now)
            .map(|f| f.reason.clone())
    }

    /// Records a refused config; true when the reason is new (worth a log line).
    pub(super) fn config_failed(&mut self, reason: &str, now: Instant) -> bool {
        let previous = self.config_failure.take();
        let attempts = previous.as_ref().map_or(0, |f| f.attempts) + 1;
        self.config_failure = Some(Failure {
            fingerprint: String::new(),
            reason: reason.to_owned(),
            attempts,
            retry_at: now + backoff(attempts),
        });
        previous.is_none_or(|f| f.reason != reason)
    }

    /// Forgets the config's failure (it changed, or an explicit load retries at once).
    pub(super) fn clear_config_failure(&mut self) {
        self.config_failure = None;
    }

    /// Forgets every failure: an explicit load retries at once.
    pub(super) fn clear_failures(&mut self) {
        self.failures.clear();
        self.config_failure = None;
    }

    /// Decides one desired version's step.
    pub(super) fn step(
        &mut self,
        version: u64,
        fingerprint: &str,
        serving: bool,
        rules: StepRules,
    ) -> VersionStep {
        let unchanged = self.loaded.get(&version).map(String::as_str) == Some(fingerprint)
            && !rules.config_changed;
        if unchanged && serving {
            return VersionStep::Keep;
        }
        if let Some(failure) = self.failures.get(&version)
            && failure.fingerprint == fingerprint
            && !rules.config_changed
            && !rules.eager
            && failure.retry_at > rules.now
        {
            return VersionStep::StillFailing(failure.reason.clone());
        }
        if rules.needs_settling
            && self.settling.get(&version).map(String::as_str) != Some(fingerprint)
        {
            self.settling.insert(version, fingerprint.to_owned());
            return VersionStep::Settle;
        }
        VersionStep::Load
    }

    pub(super) fn loaded(&mut self, version: u64, fingerprint: &str) {
        self.loaded.insert(version, fingerprint.to_owned());
        self.failures.remove(&version);
        self.settling.remove(&version);
    }

    /// Records a failed load; returns its attempt count (same content).
    pub(super) fn load_failed(
        &mut self,
        version: u64,
        fingerprint: &str,
        reason: &str,
        now: Instant,
    ) -> u32 {
        self.settling.remove(&version);
        let attempts = self
            .failures
            .get(&version)
            .filter(|f| f.fingerprint == fingerprint)
            .map_or(0, |f| f.attempts)
            + 1;
        self.failures.insert(
            version,
            Failure {
                fingerprint: fingerprint.to_owned(),
                reason: reason.to_owned(),
                attempts,
                // An upstream that is not up yet is tried again at the next pass.
                retry_at: now
                    + if crate::serve::model::is_waiting_for_upstream(reason) {
                        WAITING_RETRY
                    } else {
                        backoff(attempts)
                    },
            },
        );
        attempts
    }

    /// Ends a pass: remembers the config, forgets versions no longer served.
    pub(super) fn finish(
        &mut self,
        config: &Option<(String, ConfigText)>,
        serving: impl Fn(u64) -> bool,
    ) {
        self.config = config.clone();
        self.loaded.retain(|v, _| serving(*v));
    }

    /// Keeps the previous versions' fingerprints when they stay serving.
    pub(super) fn keep_loaded(&mut self, version: u64, fingerprint: &str) {
        self.loaded
            .entry(version)
            .or_insert_with(|| fingerprint.to_owned());
    }
}

/// What the pass knows that a version's step depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepRules {
    pub config_changed: bool,
    /// Start-up or an explicit load: no waiting for backoff or settling.
    pub eager: bool,
    /// The source may hold half-copied files (a local folder).
    pub needs_settling: bool,
    pub now: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(now: Instant) -> StepRules {
        StepRules {
            config_changed: false,
            eager: false,
            needs_settling: true,
            now,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn new_content_settles_once_then_loads_then_is_kept() {
        let now = Instant::now();
        let mut tracked = Tracked::default();
        assert_eq!(tracked.step(1, "a", false, rules(now)), VersionStep::Settle);
        assert_eq!(tracked.step(1, "a", false, rules(now)), VersionStep::Load);
        tracked.loaded(1, "a");
        assert_eq!(tracked.step(1, "a", true, rules(now)), VersionStep::Keep);
        // Changed content settles again; a changed config reloads the same content.
        assert_eq!(tracked.step(1, "b", true, rules(now)), VersionStep::Settle);
        let changed = StepRules {
            config_changed: true,
            ..rules(now)
        };
        assert_eq!(tracked.step(1, "a", true, changed), VersionStep::Settle);
        let eager = StepRules {
            needs_settling: false,
            ..rules(now)
        };
        assert_eq!(tracked.step(2, "x", false, eager), VersionStep::Load);
    }

    #[test]
    fn a_failure_backs_off_until_its_time_or_new_content() {
        let now = Instant::now();
        let mut tracked = Tracked::default();
        let settled = StepRules {
            needs_settling: false,
            ..rules(now)
        };
        assert_eq!(tracked.load_failed(1, "bad", "corrupt", now), 1);
        assert_eq!(
            tracked.step(1, "bad", false, settled),
            VersionStep::StillFailing("corrupt".into())
        );
        let later = StepRules {
            now: now + Duration::from_secs(2),
            ..settled
        };
        assert_eq!(tracked.step(1, "bad", false, later), VersionStep::Load);
        assert_eq!(
            tracked.load_failed(1, "bad", "corrupt", now),
            2,
            "attempts count up"
        );
        assert_eq!(tracked.step(1, "fixed", false, settled), VersionStep::Load);
        let eager = StepRules {
            eager: true,
            ..settled
        };
        assert_eq!(tracked.step(1, "bad", false, eager), VersionStep::Load);
    }

    #[test]
    fn config_failures_back_off_and_log_once_per_reason() {
        let now = Instant::now();
        let mut tracked = Tracked::default();
        assert!(tracked.config_failed("typo", now));
        assert!(
            !tracked.config_failed("typo", now),
            "the same reason is not logged again"
        );
        assert_eq!(tracked.config_backing_off(false, now), Some("typo".into()));
        assert_eq!(
            tracked.config_backing_off(true, now),
            None,
            "eager passes retry"
        );
        assert_eq!(tracked.config_backing_off(false, now + MAX_BACKOFF), None);
        assert!(tracked.config_failed("other", now));
    }
}
