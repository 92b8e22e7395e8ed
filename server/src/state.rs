//! Shared server state: the swappable catalog, the repository it is loaded
//! from, readiness, and model control (load/unload). Loads are prepared off
//! the catalog and swapped in whole; loads and unloads are serialized.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tracing::info;

use crate::catalog::{Catalog, ModelEntry};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::repository::{Repository, valid_model_name};

/// Settings from flags that the edges consult per request.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether load/unload are allowed over the API.
    pub model_control: bool,
    /// Ready only when every model in the catalog has a serving version.
    pub strict_readiness: bool,
    /// Largest HTTP request body accepted.
    pub max_request_bytes: usize,
}

pub struct AppState {
    catalog: ArcSwap<Catalog>,
    repository: Repository,
    pub metrics: Metrics,
    pub settings: Settings,
    draining: AtomicBool,
    control: Mutex<()>,
}

impl AppState {
    pub fn new(repository: Repository, metrics: Metrics, settings: Settings) -> Arc<Self> {
        Arc::new(AppState {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            repository,
            metrics,
            settings,
            draining: AtomicBool::new(false),
            control: Mutex::new(()),
        })
    }

    /// The current catalog; hold it for the whole request.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && (!self.settings.strict_readiness || self.catalog.load().all_ready())
    }

    /// Marks the server as going away: readiness turns false at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Loads every model of the repository. Returns the failures, by model.
    pub async fn load_all(self: &Arc<Self>) -> Result<Vec<(String, String)>, ApiError> {
        let names = self.repository.model_names().map_err(ApiError::internal)?;
        let mut failures = Vec::new();
        for name in names {
            let entry = self.load_entry(&name).await?;
            if !entry.failed.is_empty() || entry.error.is_some() {
                failures.push((name.clone(), entry.unavailable_reason()));
            }
        }
        Ok(failures)
    }

    /// Loads (or reloads) one model from the repository and swaps it in.
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        self.check_model_control()?;
        if !valid_model_name(name) || !self.repository.contains(name) {
            return Err(ApiError::not_found(format!(
                "no model `{name}` in the repository {}",
                self.repository.root().display()
            )));
        }
        let entry = self.load_entry(name).await?;
        if entry.is_ready() {
            Ok(())
        } else {
            Err(ApiError::invalid(format!(
                "failed to load model `{name}`: {}",
                entry.unavailable_reason()
            )))
        }
    }

    /// Removes a model from the catalog. Requests already holding it finish.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        self.check_model_control()?;
        let _guard = self.control.lock().await;
        let current = self.catalog.load_full();
        let Some(entry) = current.models.get(name) else {
            return Err(ApiError::not_found(format!("model `{name}` is not loaded")));
        };
        for version in entry.versions.keys() {
            self.metrics
                .set_model_ready(name, &version.to_string(), false);
        }
        let mut next = (*current).clone();
        next.models.remove(name);
        self.catalog.store(Arc::new(next));
        info!(model = name, "Model unloaded.");
        Ok(())
    }

    fn check_model_control(&self) -> Result<(), ApiError> {
        if self.settings.model_control {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "model control is disabled; start the server with --enable-model-control to load or unload models",
            ))
        }
    }

    async fn load_entry(self: &Arc<Self>, name: &str) -> Result<ModelEntry, ApiError> {
        let _guard = self.control.lock().await;
        let repository = self.repository.clone();
        let metrics = self.metrics.clone();
        let owned = name.to_owned();
        let entry = tokio::task::spawn_blocking(move || repository.load_model(&owned, &metrics))
            .await
            .map_err(|err| ApiError::internal(format!("loading model `{name}` failed: {err}")))?;
        // A load that failed entirely keeps what was serving (the old versions).
        let current = self.catalog.load_full();
        let mut next = (*current).clone();
        let kept = match (entry.is_ready(), current.models.get(name)) {
            (false, Some(previous)) if previous.is_ready() => {
                let mut kept = previous.clone();
                kept.error = entry
                    .error
                    .clone()
                    .or_else(|| Some(entry.unavailable_reason()));
                kept
            }
            _ => entry.clone(),
        };
        if let Some(previous) = current.models.get(name) {
            for version in previous
                .versions
                .keys()
                .filter(|v| !kept.versions.contains_key(v))
            {
                self.metrics
                    .set_model_ready(name, &version.to_string(), false);
            }
        }
        for version in kept.versions.keys() {
            self.metrics
                .set_model_ready(name, &version.to_string(), true);
        }
        next.models.insert(name.to_owned(), kept);
        self.catalog.store(Arc::new(next));
        Ok(entry)
    }
}
