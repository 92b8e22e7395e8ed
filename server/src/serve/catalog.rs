//! The catalog: which model versions are served right now, and the one store
//! that holds it. It is swapped as one snapshot (`ArcSwap`); each request
//! loads the snapshot once and keeps it, so it sees the old catalog or the new
//! one, never a mix. Writers (the lifecycle, model control, the canary
//! controller) take the store's writer lock, so no two of them build a next
//! catalog from the same current one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ApiError;
use crate::serve::model::ModelVersion;

/// One model's loaded versions and what failed.
#[derive(Debug, Clone, Default)]
pub struct ModelEntry {
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
    /// Versions that failed to load, with the reason.
    pub failed: BTreeMap<u64, String>,
    /// Why the model as a whole could not load (bad config, no versions).
    pub error: Option<String>,
    /// The version unversioned requests get (an MLflow alias's); else the highest.
    pub default_version: Option<u64>,
    /// Registry aliases → versions, as last listed.
    pub aliases: BTreeMap<String, u64>,
    /// Index of the source the model comes from.
    pub source: Option<usize>,
    /// Set while that source is unreachable (the loaded versions keep serving).
    pub source_error: Option<String>,
    /// Under a rollout policy: the version that has earned all traffic.
    pub stable: Option<u64>,
    /// A new version earning its traffic (unversioned requests route through it).
    pub rollout: Option<Arc<ModelRollout>>,
    /// Previous stable versions kept loaded after a promotion, until then.
    pub retained: BTreeMap<u64, std::time::Instant>,
    /// Versions rolled back: (fingerprint, reason); not loaded again until
    /// their content changes.
    pub rolled_back: BTreeMap<u64, (String, String)>,
}

/// Numbers each model rollout's shadow window.
static NEXT_ROLLOUT: AtomicU64 = AtomicU64::new(1);

/// A new version of a model going through its rollout policy.
#[derive(Debug, Clone)]
pub struct ModelRollout {
    pub stable: u64,
    pub candidate: u64,
    /// The candidate's content when it arrived.
    pub fingerprint: String,
    pub policy: Arc<crate::config::rollout::RolloutPolicy>,
    /// Variants `stable` and `candidate` of this model, with the weights and
    /// the shadow copy the rollout's phase sets.
    pub endpoint: Arc<crate::config::routes::Endpoint>,
    pub started: std::time::Instant,
}

impl ModelRollout {
    /// A rollout starting: all traffic on the stable version, and a shadow
    /// copy to the candidate when the policy has a shadow phase (else the
    /// first canary step at once).
    pub fn start(
        model: &str,
        stable: u64,
        candidate: u64,
        fingerprint: String,
        policy: Arc<crate::config::rollout::RolloutPolicy>,
    ) -> Self {
        use crate::config::rollout::{CANDIDATE, STABLE};
        use crate::config::routes::{DEFAULT_OVERRIDE_HEADER, Endpoint, Shadow, Target, Variant};
        let target = |version| Target {
            model: model.to_owned(),
            version: Some(version),
            alias: None,
        };
        let first = if policy.shadow.is_some() {
            0.0
        } else {
            policy.canary.steps[0]
        };
        let endpoint = Endpoint {
            name: model.to_owned(),
            variants: vec![
                Variant {
                    name: STABLE.to_owned(),
                    target: target(stable),
                    weight: 100.0 - first,
                },
                Variant {
                    name: CANDIDATE.to_owned(),
                    target: target(candidate),
                    weight: first,
                },
            ],
            sticky: None,
            override_header: DEFAULT_OVERRIDE_HEADER.to_owned(),
            shadow: policy.shadow.as_ref().map(|gate| Shadow {
                window: format!("{model}#{}", NEXT_ROLLOUT.fetch_add(1, Ordering::Relaxed)),
                target: target(candidate),
                percent: gate.percent,
                tolerance: gate.tolerance,
            }),
            canary: Some(policy.canary.clone()),
            capture: None,
        };
        ModelRollout {
            stable,
            candidate,
            fingerprint,
            policy,
            endpoint: Arc::new(endpoint),
            started: std::time::Instant::now(),
        }
    }
}

impl ModelEntry {
    pub fn failed(reason: String) -> Self {
        ModelEntry {
            error: Some(reason),
            ..ModelEntry::default()
        }
    }

    pub fn is_ready(&self) -> bool {
        self.versions.values().any(|v| v.unhealthy().is_none())
    }

    /// Whether the model is served by remote upstreams (loaded, or waiting
    /// for its upstreams to come up).
    pub fn waits_on_upstream(&self) -> bool {
        self.versions
            .values()
            .any(|v| v.config.platform == crate::config::model::Platform::Remote)
            || (self.versions.is_empty()
                && self
                    .error
                    .iter()
                    .chain(self.failed.values())
                    .any(|reason| crate::serve::model::is_waiting_for_upstream(reason)))
    }

    /// Why the model cannot serve, for error messages.
    pub fn unavailable_reason(&self) -> String {
        self.error
            .clone()
            .or_else(|| self.failed.values().next_back().cloned())
            .or_else(|| self.versions.values().find_map(|v| v.unhealthy()))
            .unwrap_or_else(|| "no version is loaded".to_owned())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub models: BTreeMap<String, ModelEntry>,
    /// Every model the sources list, loaded or not (for the repository index).
    pub known_models: Vec<String>,
    /// Endpoints and their variants; swapped together with the models.
    pub routes: Arc<crate::config::routes::RouteTable>,
    /// Why the route file's latest content was refused (the previous routes stay).
    pub routes_error: Option<String>,
}

/// A row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexRow {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The catalog in force, behind one writer lock.
#[derive(Default)]
pub struct CatalogStore {
    current: arc_swap::ArcSwap<Catalog>,
    writer: tokio::sync::Mutex<()>,
}

/// Held while a writer builds and publishes the next catalog.
pub struct CatalogWriter<'a> {
    store: &'a CatalogStore,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl CatalogStore {
    pub fn new() -> Arc<Self> {
        Arc::new(CatalogStore::default())
    }

    /// The current catalog; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Waits for the writer lock (other writers finish first).
    pub async fn writer(&self) -> CatalogWriter<'_> {
        CatalogWriter {
            store: self,
            _lock: self.writer.lock().await,
        }
    }
}

impl CatalogWriter<'_> {
    /// The catalog to build the next one from.
    pub fn current(&self) -> Arc<Catalog> {
        self.store.current.load_full()
    }

    /// Swaps `next` in: every later request sees it. Pipelines are checked
    /// against it first, so they are ready exactly when their steps are.
    pub fn publish(&self, next: Catalog) {
        crate::serve::pipeline::check_all(&next);
        self.store.current.store(Arc::new(next));
    }
}

impl Catalog {
    /// Finds the version a request names, or the highest loaded one; a version
    /// whose upstream is down is refused at once (503), not after a timeout.
    pub fn lookup(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<ModelVersion>, ApiError> {
        let found = self.lookup_loaded(model, version)?;
        if let Some(reason) = found.unhealthy() {
            return Err(ApiError::unavailable(format!(
                "model `{model}` is not ready: {reason}"
            )));
        }
        Ok(found)
    }

    fn lookup_loaded(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<ModelVersion>, ApiError> {
        let entry = self.models.get(model).ok_or_else(|| {
            let known: Vec<&str> = self.models.keys().map(String::as_str).collect();
            ApiError::not_found(format!(
                "unknown model `{model}`; available models: {known:?}"
            ))
        })?;
        match version.filter(|v| !v.is_empty()) {
            None => entry
                .default_version
                .and_then(|v| entry.versions.get(&v))
                .or_else(|| entry.versions.values().next_back())
                .cloned()
                .ok_or_else(|| {
                    ApiError::unavailable(format!(
                        "model `{model}` is not ready: {}",
                        entry.unavailable_reason()
                    ))
                }),
            Some(text) => {
                let number: u64 = text.parse().map_err(|_| {
                    ApiError::not_found(format!(
                        "model `{model}` has no version `{text}`: versions are positive integers"
                    ))
                })?;
                if let Some(found) = entry.versions.get(&number) {
                    return Ok(found.clone());
                }
                if let Some(reason) = entry.failed.get(&number) {
                    return Err(ApiError::unavailable(format!(
                        "model `{model}` version {number} is not ready: {reason}"
                    )));
                }
                let loaded: Vec<&u64> = entry.versions.keys().collect();
                Err(ApiError::not_found(format!(
                    "model `{model}` has no version {number}; loaded versions: {loaded:?}"
                )))
            }
        }
    }

    /// Why the loaded version a route target means refuses requests (its
    /// breaker is open); `None` when it is healthy or not loaded at all.
    pub fn unhealthy(&self, target: &crate::config::routes::Target) -> Option<String> {
        let version = match (&target.version, &target.alias) {
            (Some(v), _) => Some(v.to_string()),
            (None, Some(alias)) => Some(
                self.models
                    .get(&target.model)?
                    .aliases
                    .get(alias)?
                    .to_string(),
            ),
            (None, None) => None,
        };
        self.lookup_loaded(&target.model, version.as_deref())
            .ok()?
            .unhealthy()
    }

    /// The loaded version a route target means (fixed version, alias, or default).
    pub fn resolve(
        &self,
        target: &crate::config::routes::Target,
    ) -> Result<Arc<ModelVersion>, ApiError> {
        let version = match (&target.version, &target.alias) {
            (Some(v), _) => Some(v.to_string()),
            (None, Some(alias)) => {
                let entry = self.models.get(&target.model).ok_or_else(|| {
                    ApiError::unavailable(format!("model `{}` is not loaded", target.model))
                })?;
                let version = entry.aliases.get(alias).ok_or_else(|| {
                    ApiError::unavailable(format!(
                        "model `{}` has no alias `{alias}`",
                        target.model
                    ))
                })?;
                Some(version.to_string())
            }
            (None, None) => None,
        };
        self.lookup(&target.model, version.as_deref())
    }

    /// For an endpoint's name: its ready variant with the most traffic (what
    /// its metadata and readiness show); `None` when `name` is no endpoint.
    pub fn endpoint_model(&self, name: &str) -> Option<Result<Arc<ModelVersion>, ApiError>> {
        let endpoint = self.routes.endpoints.get(name)?;
        let mut variants: Vec<_> = endpoint
            .variants
            .iter()
            .filter(|v| v.weight > 0.0)
            .collect();
        variants.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        Some(
            variants
                .iter()
                .find_map(|v| self.resolve(&v.target).ok())
                .ok_or_else(|| {
                    ApiError::unavailable(format!(
                        "endpoint `{name}` has no ready variant with traffic"
                    ))
                }),
        )
    }

    /// Whether every model has at least one version serving.
    pub fn all_ready(&self) -> bool {
        self.models.values().all(ModelEntry::is_ready)
    }

    /// `all_ready`, not counting models served by remote upstreams.
    pub fn all_local_ready(&self) -> bool {
        self.models
            .values()
            .all(|entry| entry.is_ready() || entry.waits_on_upstream())
    }

    /// Index rows for loaded models, plus `unloaded` for models the sources
    /// list that are not loaded.
    pub fn index(&self, ready_only: bool) -> Vec<IndexRow> {
        let mut rows = Vec::new();
        for (name, entry) in &self.models {
            for (version, loaded) in &entry.versions {
                if let Some(reason) = loaded.unhealthy() {
                    rows.push(IndexRow {
                        name: name.clone(),
                        version: version.to_string(),
                        state: "UNAVAILABLE",
                        reason,
                    });
                    continue;
                }
                rows.push(IndexRow {
                    name: name.clone(),
                    version: version.to_string(),
                    state: "READY",
                    // Serving, but the registry cannot be reached: say so.
                    reason: entry
                        .source_error
                        .as_ref()
                        .map(|e| format!("serving the last good version: {e}"))
                        .unwrap_or_default(),
                });
            }
            for (version, reason) in &entry.failed {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: version.to_string(),
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                });
            }
            if let Some(reason) = &entry.error {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                });
            }
        }
        for name in &self.known_models {
            if !self.models.contains_key(name) {
                rows.push(IndexRow {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: "unloaded".to_owned(),
                });
            }
        }
        if ready_only {
            rows.retain(|row| row.state == "READY");
        }
        rows.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        rows
    }
}
