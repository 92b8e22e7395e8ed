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
use std::time::Instant;

use tracing::{debug, info, warn};

mod rollout;
mod tracked;

use tracked::{StepRules, Tracked, VersionStep};

use crate::config::model::{ConfigDefaults, ModelConfig, from_triton};
use crate::control::source::{ModelListing, Source, VersionListing};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::serve::catalog::{Catalog, ModelEntry};
use crate::serve::model::ModelVersion;

pub struct Lifecycle {
    sources: Vec<Arc<dyn Source>>,
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
    /// Rollout outcomes from before a restart, read once at the first load.
    rollout_memory: crate::control::rollouts::Memory,
    remembered: BTreeMap<String, crate::control::rollouts::Remembered>,
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
            sources: sources.into_iter().map(Arc::from).collect(),
            defaults,
            metrics,
            tracked: HashMap::new(),
            unloaded: BTreeSet::new(),
            source_errors: BTreeMap::new(),
            routes_path: None,
            routes_text: None,
            rollout_memory: crate::control::rollouts::Memory::default(),
            remembered: BTreeMap::new(),
        }
    }

    /// The sources, by index (a model's `ModelEntry::source`).
    pub fn sources(&self) -> Vec<Arc<dyn Source>> {
        self.sources.clone()
    }

    /// Remember rollouts' outcomes in this file across restarts.
    pub fn with_rollout_memory(mut self, memory: crate::control::rollouts::Memory) -> Self {
        self.remembered = memory.load();
        self.rollout_memory = memory;
        self
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
                    let shadow = endpoint
                        .shadow
                        .as_ref()
                        .and_then(|s| next.resolve(&s.target).ok());
                    self.expose_endpoint(endpoint, shadow.as_deref());
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

    /// An endpoint's series, as its routes load: its variants' outcomes and
    /// weights, its shadow's agreement per output (of `shadow`'s outputs).
    fn expose_endpoint(
        &self,
        endpoint: &crate::config::routes::Endpoint,
        shadow: Option<&ModelVersion>,
    ) {
        let variants: Vec<&str> = endpoint.variants.iter().map(|v| v.name.as_str()).collect();
        self.metrics.expose_endpoint(
            &endpoint.name,
            &variants,
            endpoint.shadow.is_some(),
            endpoint.canary.is_some(),
        );
        for variant in &endpoint.variants {
            self.metrics
                .set_route_weight(&endpoint.name, &variant.name, variant.weight);
        }
        if let Some(model) = shadow {
            let outputs: Vec<&str> = model
                .signature
                .outputs
                .iter()
                .map(|o| o.name.as_str())
                .collect();
            self.metrics.expose_shadow_outputs(&endpoint.name, &outputs);
        }
    }

    /// A model rollout's series, as it starts: the endpoint's and its phase.
    fn expose_rollout(&self, entry: &ModelEntry, rollout: &crate::serve::catalog::ModelRollout) {
        let endpoint = &rollout.endpoint;
        let shadow = entry
            .versions
            .get(&rollout.candidate)
            .filter(|_| endpoint.shadow.is_some());
        self.expose_endpoint(endpoint, shadow.map(|m| &**m));
        let phase = if endpoint.shadow.is_some() {
            "shadow"
        } else {
            "canary"
        };
        self.metrics.set_rollout_phase(&endpoint.name, phase);
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
            tracked.clear_failures();
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
            let pass = ModelPass {
                model: &model,
                source_index,
                listing: &listing,
                current: current.models.get(&model),
                eager: initial || forced,
                now,
            };
            let entry = self.reconcile_model(pass).await;
            let Some(mut entry) = entry else { continue };
            entry.source = Some(source_index);
            if let Some(rollout) = &entry.rollout {
                let started = current
                    .models
                    .get(&model)
                    .and_then(|e| e.rollout.as_ref())
                    .is_none_or(|r| !Arc::ptr_eq(r, rollout));
                if started {
                    self.expose_rollout(&entry, rollout);
                }
            }
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
            // A rolled-back version is a rollout's decision, not a load failure.
            if let Some(reason) = entry.error.clone().or_else(|| {
                entry
                    .failed
                    .iter()
                    .rfind(|(v, _)| !entry.rolled_back.contains_key(v))
                    .map(|(_, reason)| reason.clone())
            }) {
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

    /// One model's pass: parse its config, decide each desired version's
    /// step, load what must load, and return the entry to serve.
    async fn reconcile_model(&mut self, pass: ModelPass<'_>) -> Option<ModelEntry> {
        let ModelPass {
            model,
            source_index,
            listing,
            current,
            eager,
            now,
        } = pass;
        let tracked = self.tracked.entry(model.to_owned()).or_default();
        let config_changed = tracked.config_changed(&listing.config);
        if config_changed {
            tracked.clear_config_failure();
        }
        let previous_versions = current.map(|e| e.versions.clone()).unwrap_or_default();
        let parsed = match tracked.config_backing_off(eager, now) {
            Some(reason) => Err(reason),
            None => self.parse_config(model, &listing.config),
        };
        let (config, warnings) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                let tracked = self.tracked.entry(model.to_owned()).or_default();
                if tracked.config_failed(&reason, now) {
                    warn!(model, %reason, "Model configuration is invalid; serving versions stay.");
                }
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

        let listed_versions = listed_versions(&config, listing);
        let present: Vec<u64> = listed_versions.keys().copied().collect();
        let mut desired: Vec<u64> = match listing.pinned {
            Some(v) => vec![v],
            None => config.version_policy.select(&present),
        };
        // A registry's candidate (MLflow's candidate alias) is loaded beside
        // the pinned version when a rollout policy can judge it; it serves
        // nothing unless its rollout promotes it.
        if let Some(candidate) = listing.candidate
            && config.rollout.is_some()
            && !desired.contains(&candidate)
        {
            desired.push(candidate);
        }
        let remembered = current
            .is_none()
            .then(|| self.remembered.get(model).cloned())
            .flatten()
            .filter(|_| config.rollout.is_some());
        // After a restart the remembered stable version serves again, whatever
        // the version policy picks (a newer one is its candidate).
        if let Some(stable) = remembered.as_ref().and_then(|r| r.stable)
            && listed_versions.contains_key(&stable)
            && !desired.contains(&stable)
        {
            desired.push(stable);
        }
        // A rolled-back version stays out until its content changes (also
        // across a restart, from the rollout memory).
        let rolled_back: BTreeMap<u64, (String, String)> = current
            .map(|e| e.rolled_back.clone())
            .or_else(|| remembered.as_ref().map(|r| r.rolled_back.clone()))
            .unwrap_or_default()
            .into_iter()
            .filter(|(v, (fingerprint, _))| {
                listed_versions
                    .get(v)
                    .is_some_and(|l| &l.fingerprint == fingerprint)
            })
            .collect();
        let rules = StepRules {
            config_changed,
            eager,
            needs_settling: self.sources[source_index].needs_settling() && !eager,
            now,
        };
        let mut versions: BTreeMap<u64, Arc<ModelVersion>> = BTreeMap::new();
        let mut failed: BTreeMap<u64, String> = BTreeMap::new();
        let mut waiting = false;
        for version in &desired {
            if let Some((_, reason)) = rolled_back.get(version) {
                failed.insert(*version, format!("rolled back: {reason}"));
                continue;
            }
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
            let serving = previous_versions.get(version);
            let tracked = self.tracked.entry(model.to_owned()).or_default();
            match tracked.step(*version, &listed.fingerprint, serving.is_some(), rules) {
                VersionStep::Keep => {
                    if let Some(serving) = serving {
                        versions.insert(*version, serving.clone());
                    }
                }
                VersionStep::StillFailing(reason) => {
                    failed.insert(*version, reason);
                }
                VersionStep::Settle => {
                    // Wait for the next scan to confirm the file is complete.
                    waiting = true;
                    if let Some(serving) = serving {
                        versions.insert(*version, serving.clone());
                    }
                }
                VersionStep::Load => {
                    let loaded = self
                        .load_version(model, *version, source_index, listed, &config)
                        .await;
                    let tracked = self.tracked.entry(model.to_owned()).or_default();
                    match loaded {
                        Ok(loaded) => {
                            tracked.loaded(*version, &listed.fingerprint);
                            versions.insert(*version, loaded);
                        }
                        Err(reason) => {
                            let attempts =
                                tracked.load_failed(*version, &listed.fingerprint, &reason, now);
                            if crate::serve::model::is_waiting_for_upstream(&reason) && attempts > 1
                            {
                                // Said once; retried every pass until the upstream is up.
                                debug!(model, version, attempts, %reason, "Still waiting for the upstream.");
                            } else {
                                warn!(model, version, attempts, %reason, "Model version failed to load; serving versions stay.");
                            }
                            failed.insert(*version, reason);
                        }
                    }
                }
            }
        }
        let tracked = self.tracked.entry(model.to_owned()).or_default();
        tracked.finish(&listing.config, |v| versions.contains_key(&v));
        // Never leave a model with nothing while its replacement is not ready.
        if versions.is_empty() && !previous_versions.is_empty() {
            versions = previous_versions.clone();
            for v in versions.keys() {
                if let Some(listed) = current.and_then(|_| listing.versions.get(v)) {
                    tracked.keep_loaded(*v, &listed.fingerprint);
                }
            }
        }
        let alias_moved_to = listing.pinned.filter(|v| tracked.alias_seen != Some(*v));
        tracked.alias_seen = listing.pinned;
        let mut default_version = listing.pinned.filter(|v| versions.contains_key(v));
        let decided = match &config.rollout {
            Some(policy) => {
                self.metrics.expose_rollout(model);
                rollout::decide(rollout::Pass {
                    model,
                    policy,
                    current,
                    previous: &previous_versions,
                    versions: &mut versions,
                    listed: &listed_versions,
                    alias_moved_to,
                    remembered_stable: remembered.as_ref().and_then(|r| r.stable),
                    now,
                })
            }
            None => rollout::Decided::default(),
        };
        if decided.stable.is_some() {
            default_version = decided.stable;
        }
        let error = if !versions.is_empty() || !failed.is_empty() {
            None
        } else if waiting {
            Some("waiting for the model file to finish copying".to_owned())
        } else if desired.is_empty() {
            Some(format!(
                "no version matches the version policy {:?} (present: {present:?})",
                config.version_policy
            ))
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
            stable: decided.stable,
            rollout: decided.rollout,
            retained: decided.retained,
            rolled_back,
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
        let dir: PathBuf = if config.platform.has_no_files() {
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

/// Load results as an API answer for an explicit load of `model`.
pub fn load_result(catalog: &Catalog, model: &str) -> Result<(), ApiError> {
    match catalog.models.get(model) {
        Some(entry)
            if entry.is_ready()
                && entry
                    .failed
                    .keys()
                    .all(|v| entry.rolled_back.contains_key(v))
                && entry.error.is_none() =>
        {
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

/// What one model's pass works on.
struct ModelPass<'a> {
    model: &'a str,
    source_index: usize,
    listing: &'a ModelListing,
    current: Option<&'a ModelEntry>,
    /// Start-up or an explicit load: no backoff, no settling.
    eager: bool,
    now: Instant,
}

/// The versions a listing offers. A remote model or a pipeline has no files:
/// one version, identified by its config.
fn listed_versions<'a>(
    config: &ModelConfig,
    listing: &'a ModelListing,
) -> std::borrow::Cow<'a, BTreeMap<u64, VersionListing>> {
    if config.platform.has_no_files() {
        let text = listing
            .config
            .as_ref()
            .and_then(|(_, t)| t.as_deref().ok())
            .unwrap_or_default();
        let fingerprint = crate::control::source::content_key(&[text]);
        std::borrow::Cow::Owned(BTreeMap::from([(1u64, VersionListing { fingerprint })]))
    } else {
        std::borrow::Cow::Borrowed(&listing.versions)
    }
}
