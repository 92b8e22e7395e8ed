//! Model lifecycle: keeps the catalog in step with the sources.
//!
//! Each reconcile lists every source, decides the versions each model should
//! serve (version policy, or the version an MLflow alias names), and for each
//! new or changed one: fetches it, loads it, warms it up — all off to the
//! side — and only then swaps one new catalog in (`ArcSwap`, one snapshot per
//! request). Old versions stop getting new requests at the swap, drain what
//! they hold, and free their runtimes when the last request lets go.
//!
//! Nothing that fails takes down what serves: a corrupt file, a bad config, or
//! an unreachable registry leaves the serving versions in place, shows in the
//! repository index with its reason, is logged and counted, and is retried
//! with exponential backoff (or at once when the content changes). A local
//! folder's new files are taken only once their fingerprint (size, mtime) is
//! the same in two consecutive scans, so a half-copied file is never loaded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::model::{ConfigDefaults, ModelConfig, from_triton};
use crate::control::source::{ModelListing, Source, VersionListing};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::serve::catalog::{Catalog, ModelEntry};
use crate::serve::model::ModelVersion;

/// First retry delay after a failure; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Failure {
    fingerprint: String,
    reason: String,
    attempts: u32,
    retry_at: Instant,
}

/// What the reconciler remembers about a model between runs.
#[derive(Debug, Default)]
struct Tracked {
    /// Fingerprint of each loaded version.
    loaded: BTreeMap<u64, String>,
    /// The config text the loaded versions were built with.
    config: Option<(String, crate::config::file::ConfigText)>,
    failures: BTreeMap<u64, Failure>,
    config_failure: Option<Failure>,
    /// Versions seen once with this fingerprint, waiting to be seen unchanged again.
    settling: BTreeMap<u64, String>,
}

pub struct Lifecycle {
    sources: Vec<Box<dyn Source>>,
    defaults: ConfigDefaults,
    metrics: Metrics,
    tracked: HashMap<String, Tracked>,
    /// Models unloaded through the API; not reloaded until loaded again.
    unloaded: BTreeSet<String>,
    /// The last reachability error of each source, by index.
    source_errors: BTreeMap<usize, String>,
    /// The route file, re-read on every reconcile.
    routes_path: Option<PathBuf>,
    /// The route file text behind the routes in force.
    routes_text: Option<String>,
}

/// What one reconcile changed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub loaded: Vec<(String, u64)>,
    pub failed: Vec<(String, String)>,
}

impl Lifecycle {
    pub fn new(sources: Vec<Box<dyn Source>>, defaults: ConfigDefaults, metrics: Metrics) -> Self {
        Lifecycle {
            sources,
            defaults,
            metrics,
            tracked: HashMap::new(),
            unloaded: BTreeSet::new(),
            source_errors: BTreeMap::new(),
            routes_path: None,
            routes_text: None,
        }
    }

    /// Serve the endpoints of this route file (watched like the models).
    pub fn with_routes(mut self, path: Option<PathBuf>) -> Self {
        self.routes_path = path;
        self
    }

    /// Re-reads the route file; a refused file leaves the routes in force.
    fn refresh_routes(&mut self, next: &mut Catalog) {
        let Some(path) = &self.routes_path else {
            return;
        };
        let text = match crate::config::file::read_config_file(path) {
            Ok(None) => None,
            Ok(Some(Ok(text))) => Some(text),
            Ok(Some(Err(reason))) => {
                next.routes_error = Some(format!("{}: {reason}", path.display()));
                return;
            }
            Err(err) => {
                next.routes_error = Some(format!("{}: {err}", path.display()));
                return;
            }
        };
        if text == self.routes_text {
            return;
        }
        let models: BTreeSet<String> = next
            .known_models
            .iter()
            .cloned()
            .chain(next.models.keys().cloned())
            .collect();
        let parsed = match &text {
            None => Ok(crate::config::routes::RouteTable::default()),
            Some(text) => crate::config::routes::parse(text, &models),
        };
        match parsed {
            Ok(routes) => {
                info!(path = %path.display(), endpoints = routes.endpoints.len(), "Routes loaded.");
                for endpoint in routes.endpoints.values() {
                    let variants: Vec<&str> =
                        endpoint.variants.iter().map(|v| v.name.as_str()).collect();
                    self.metrics.expose_endpoint(
                        &endpoint.name,
                        &variants,
                        endpoint.shadow.is_some(),
                        endpoint.canary.is_some(),
                    );
                    for variant in &endpoint.variants {
                        self.metrics.set_route_weight(
                            &endpoint.name,
                            &variant.name,
                            variant.weight,
                        );
                    }
                }
                next.routes = Arc::new(routes);
                next.routes_error = None;
                self.routes_text = text;
            }
            Err(reason) => {
                if next.routes_error.as_deref() != Some(reason.as_str()) {
                    warn!(path = %path.display(), %reason, "Route file refused; the previous routes keep serving.");
                    self.metrics.route_file_error();
                }
                next.routes_error = Some(format!("{}: {reason}", path.display()));
            }
        }
    }

    pub fn describe_sources(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.describe()).collect()
    }

    pub fn mark_unloaded(&mut self, model: &str) {
        self.unloaded.insert(model.to_owned());
        self.tracked.remove(model);
    }

    pub fn mark_wanted(&mut self, model: &str) {
        self.unloaded.remove(model);
        if let Some(tracked) = self.tracked.get_mut(model) {
            // An explicit load retries at once.
            tracked.failures.clear();
            tracked.config_failure = None;
        }
    }

    fn parse_config(
        &self,
        model: &str,
        config: &Option<(String, crate::config::file::ConfigText)>,
    ) -> Result<(ModelConfig, Vec<String>), String> {
        let config = match config {
            None => None,
            Some((file, Err(reason))) => return Err(format!("{file}: {reason}")),
            Some((file, Ok(text))) => Some((file, text)),
        };
        match config {
            None => Ok((ModelConfig::derived(&self.defaults), Vec::new())),
            Some((file, text)) if file.ends_with(".pbtxt") => {
                from_triton(text, model, &self.defaults).map_err(|e| format!("{file}: {e}"))
            }
            Some((file, text)) => ModelConfig::parse(text, &self.defaults)
                .map(|c| (c, Vec::new()))
                .map_err(|e| format!("{file}: {e}")),
        }
    }

    /// Brings `current` in line with the sources and returns the next catalog.
    /// `initial`: the first run at start-up (nothing to settle against).
    /// `only`: reconcile just this model (explicit load); others are kept as they are.
    pub async fn reconcile(
        &mut self,
        current: &Catalog,
        initial: bool,
        only: Option<&str>,
    ) -> (Catalog, Outcome) {
        let now = Instant::now();
        let mut outcome = Outcome::default();
        let mut next = current.clone();
        let mut seen: BTreeMap<String, (usize, ModelListing)> = BTreeMap::new();
        let mut unreachable: BTreeSet<usize> = BTreeSet::new();
        for (index, source) in self.sources.iter().enumerate() {
            match source.list().await {
                Ok(listing) => {
                    self.metrics.set_source_up(&source.describe(), true);
                    if self.source_errors.remove(&index).is_some() {
                        info!(source = %source.describe(), "Model source reachable again.");
                    }
                    for (model, listed) in listing {
                        if seen.contains_key(&model) {
                            warn!(model, source = %source.describe(), "Model also found in an earlier source; that one is used.");
                            continue;
                        }
                        seen.insert(model, (index, listed));
                    }
                }
                Err(err) => {
                    self.metrics.source_error(&source.describe());
                    if self.source_errors.insert(index, err.to_string()).is_none() {
                        warn!(source = %source.describe(), error = %err, "Model source unreachable; serving what is loaded.");
                    }
                    unreachable.insert(index);
                }
            }
        }

        // Models gone from a reachable source are removed; models of an
        // unreachable source keep serving, with the reason shown.
        let reachable_names: BTreeSet<String> = seen.keys().cloned().collect();
        next.models.retain(|name, entry| {
            if only.is_some_and(|o| o != name) || reachable_names.contains(name) {
                return true;
            }
            let source_down = entry.source.is_some_and(|i| unreachable.contains(&i));
            if source_down {
                return true;
            }
            info!(model = %name, "Model gone from its source; unloading.");
            false
        });
        for entry in next.models.values_mut() {
            entry.source_error = entry
                .source
                .and_then(|i| self.source_errors.get(&i).cloned());
        }
        next.known_models = reachable_names
            .iter()
            .chain(
                current
                    .known_models
                    .iter()
                    .filter(|n| !reachable_names.contains(*n) && !seen.is_empty()),
            )
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();

        for (model, (source_index, listing)) in seen {
            if only.is_some_and(|o| o != model) || self.unloaded.contains(&model) {
                if self.unloaded.contains(&model) {
                    next.models.remove(&model);
                }
                continue;
            }
            let forced = only == Some(model.as_str());
            let entry = self
                .reconcile_model(
                    &model,
                    source_index,
                    &listing,
                    current.models.get(&model),
                    initial || forced,
                    now,
                )
                .await;
            let Some(mut entry) = entry else { continue };
            entry.source = Some(source_index);
            for (version, loaded) in &entry.versions {
                let was = current
                    .models
                    .get(&model)
                    .and_then(|e| e.versions.get(version));
                if !was.is_some_and(|w| Arc::ptr_eq(w, loaded)) {
                    self.metrics.model_event(&model, "swapped_in");
                    outcome.loaded.push((model.clone(), *version));
                }
            }
            if let Some(reason) = entry
                .error
                .clone()
                .or_else(|| entry.failed.values().next_back().cloned())
            {
                outcome.failed.push((model.clone(), reason));
            }
            for version in current
                .models
                .get(&model)
                .map(|e| e.versions.keys().copied().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                if !entry.versions.contains_key(&version) {
                    self.metrics
                        .set_model_ready(&model, &version.to_string(), false);
                    self.metrics.model_event(&model, "retired");
                    info!(model = %model, version, "Version retired; it drains and unloads.");
                }
            }
            for version in entry.versions.keys() {
                self.metrics
                    .set_model_ready(&model, &version.to_string(), true);
            }
            next.models.insert(model, entry);
        }
        if only.is_none() {
            self.refresh_routes(&mut next);
        }
        (next, outcome)
    }

    async fn reconcile_model(
        &mut self,
        model: &str,
        source_index: usize,
        listing: &ModelListing,
        current: Option<&ModelEntry>,
        eager: bool,
        now: Instant,
    ) -> Option<ModelEntry> {
        let tracked = self.tracked.entry(model.to_owned()).or_default();
        let config_changed = tracked.config != listing.config;
        if config_changed {
            tracked.config_failure = None;
        }
        let previous_versions = current.map(|e| e.versions.clone()).unwrap_or_default();

        let parsed = if let Some(failure) = tracked
            .config_failure
            .as_ref()
            .filter(|f| !eager && f.retry_at > now)
        {
            Err(failure.reason.clone())
        } else {
            self.parse_config(model, &listing.config)
        };
        let tracked = self.tracked.entry(model.to_owned()).or_default();
        let (config, warnings) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                let attempts = tracked.config_failure.as_ref().map_or(0, |f| f.attempts) + 1;
                if tracked
                    .config_failure
                    .as_ref()
                    .is_none_or(|f| f.reason != reason)
                {
                    warn!(model, %reason, "Model configuration is invalid; serving versions stay.");
                }
                tracked.config_failure = Some(Failure {
                    fingerprint: String::new(),
                    reason: reason.clone(),
                    attempts,
                    retry_at: now + backoff(attempts),
                });
                let mut entry = current.cloned().unwrap_or_default();
                entry.error = Some(reason);
                return Some(entry);
            }
        };
        if config_changed {
            for warning in &warnings {
                warn!(model, %warning, "Model configuration field has no effect.");
            }
        }

        // A remote model has no files: one version, identified by its config.
        let remote_versions;
        let listed_versions = if config.platform == crate::config::model::Platform::Remote {
            let fingerprint = crate::control::source::content_key(&[listing
                .config
                .as_ref()
                .and_then(|(_, t)| t.as_deref().ok())
                .unwrap_or_default()]);
            remote_versions = BTreeMap::from([(1u64, VersionListing { fingerprint })]);
            &remote_versions
        } else {
            &listing.versions
        };
        let present: Vec<u64> = listed_versions.keys().copied().collect();
        let desired: Vec<u64> = match listing.pinned {
            Some(v) => vec![v],
            None => config.version_policy.select(&present),
        };
        let needs_settling = self.sources[source_index].needs_settling() && !eager;
        let mut versions: BTreeMap<u64, Arc<ModelVersion>> = BTreeMap::new();
        let mut failed: BTreeMap<u64, String> = BTreeMap::new();
        let mut waiting = false;
        for version in &desired {
            let Some(listed) = listed_versions.get(version) else {
                failed.insert(
                    *version,
                    format!(
                        "version {version} is not in {}",
                        self.sources[source_index].describe()
                    ),
                );
                continue;
            };
            let tracked = self.tracked.entry(model.to_owned()).or_default();
            let unchanged =
                tracked.loaded.get(version) == Some(&listed.fingerprint) && !config_changed;
            if unchanged && let Some(serving) = previous_versions.get(version) {
                versions.insert(*version, serving.clone());
                continue;
            }
            if let Some(failure) = tracked.failures.get(version)
                && failure.fingerprint == listed.fingerprint
                && !config_changed
                && !eager
                && failure.retry_at > now
            {
                failed.insert(*version, failure.reason.clone());
                continue;
            }
            if needs_settling && tracked.settling.get(version) != Some(&listed.fingerprint) {
                // First sighting of this content: wait for the next scan to confirm it is complete.
                tracked
                    .settling
                    .insert(*version, listed.fingerprint.clone());
                waiting = true;
                if let Some(serving) = previous_versions.get(version) {
                    versions.insert(*version, serving.clone());
                }
                continue;
            }
            match self
                .load_version(model, *version, source_index, listed, &config)
                .await
            {
                Ok(loaded) => {
                    let tracked = self.tracked.entry(model.to_owned()).or_default();
                    tracked.loaded.insert(*version, listed.fingerprint.clone());
                    tracked.failures.remove(version);
                    tracked.settling.remove(version);
                    versions.insert(*version, loaded);
                }
                Err(reason) => {
                    let tracked = self.tracked.entry(model.to_owned()).or_default();
                    tracked.settling.remove(version);
                    let attempts = tracked
                        .failures
                        .get(version)
                        .filter(|f| f.fingerprint == listed.fingerprint)
                        .map_or(0, |f| f.attempts)
                        + 1;
                    warn!(model, version, attempts, %reason, "Model version failed to load; serving versions stay.");
                    tracked.failures.insert(
                        *version,
                        Failure {
                            fingerprint: listed.fingerprint.clone(),
                            reason: reason.clone(),
                            attempts,
                            retry_at: now + backoff(attempts),
                        },
                    );
                    failed.insert(*version, reason);
                }
            }
        }
        let tracked = self.tracked.entry(model.to_owned()).or_default();
        tracked.config = listing.config.clone();
        tracked.loaded.retain(|v, _| versions.contains_key(v));
        // Never leave a model with nothing while its replacement is not ready.
        if versions.is_empty() && !previous_versions.is_empty() {
            versions = previous_versions;
            for v in versions.keys() {
                if let Some(fp) = current.and_then(|_| listing.versions.get(v)) {
                    tracked
                        .loaded
                        .entry(*v)
                        .or_insert_with(|| fp.fingerprint.clone());
                }
            }
        }
        let default_version = listing.pinned.filter(|v| versions.contains_key(v));
        let error = if versions.is_empty() && failed.is_empty() {
            if waiting {
                Some("waiting for the model file to finish copying".to_owned())
            } else if desired.is_empty() {
                Some(format!(
                    "no version matches the version policy {:?} (present: {present:?})",
                    config.version_policy
                ))
            } else {
                None
            }
        } else {
            None
        };
        Some(ModelEntry {
            versions,
            failed,
            error,
            default_version,
            aliases: listing.aliases.clone(),
            source: Some(source_index),
            source_error: None,
        })
    }

    async fn load_version(
        &self,
        model: &str,
        version: u64,
        source_index: usize,
        listed: &VersionListing,
        config: &ModelConfig,
    ) -> Result<Arc<ModelVersion>, String> {
        let started = Instant::now();
        let dir: PathBuf = if config.platform == crate::config::model::Platform::Remote {
            PathBuf::new()
        } else {
            self.sources[source_index]
                .fetch(model, version, listed)
                .await
                .map_err(|e| e.to_string())?
        };
        let (name, config, metrics) = (model.to_owned(), config.clone(), self.metrics.clone());
        let result = tokio::task::spawn_blocking(move || {
            ModelVersion::load(&name, version, &dir, &config, &metrics)
        })
        .await
        .map_err(|e| format!("loading panicked: {e}"))
        .and_then(|r| r);
        self.metrics.observe_model_load(
            model,
            if result.is_ok() { "success" } else { "failure" },
            started.elapsed(),
        );
        result
    }
}

fn backoff(attempts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(16)))
        .min(MAX_BACKOFF)
}

/// Load results as an API answer for an explicit load of `model`.
pub fn load_result(catalog: &Catalog, model: &str) -> Result<(), ApiError> {
    match catalog.models.get(model) {
        Some(entry) if entry.is_ready() && entry.failed.is_empty() && entry.error.is_none() => {
            Ok(())
        }
        Some(entry) => Err(ApiError::invalid(format!(
            "failed to load model `{model}`: {}",
            entry.unavailable_reason()
        ))),
        None => Err(ApiError::not_found(format!(
            "no model `{model}` in the model sources"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
