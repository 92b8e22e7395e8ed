//! Shared server state: the swappable catalog, the lifecycle manager that
//! fills it from the model sources, readiness, and model control
//! (load/unload). Reconciles and control calls are serialized by one lock.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::error::{ApiError, ErrorKind};
use crate::lifecycle::{Lifecycle, load_result};
use crate::metrics::Metrics;
use crate::repository::valid_model_name;

/// Settings from flags that the edges consult per request.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether load/unload are allowed over the API.
    pub model_control: bool,
    /// Ready only when every model in the catalog has a serving version.
    pub strict_readiness: bool,
    /// Largest HTTP request body accepted.
    pub max_request_bytes: usize,
    /// HMAC secret MLflow signs its webhooks with; `None` turns the webhook endpoint off.
    pub mlflow_webhook_secret: Option<String>,
    /// Bearer tokens; empty sets leave the API open.
    pub tokens: crate::auth::Tokens,
    /// Largest element count of one input tensor.
    pub max_tensor_elements: usize,
    /// Longest single BYTES element.
    pub max_bytes_element: usize,
    /// Longest an HTTP request may take from its headers to its answer
    /// (bounds slow bodies; model work is bounded by queue timeouts).
    pub request_timeout: std::time::Duration,
}

pub struct AppState {
    catalog: ArcSwap<Catalog>,
    lifecycle: Mutex<Lifecycle>,
    pub metrics: Metrics,
    pub settings: Settings,
    draining: AtomicBool,
    /// Wakes the repository poller early (a file changed, a webhook arrived).
    poke: Notify,
    /// Per-variant outcomes, canary rollouts and shadow copies of routed endpoints.
    pub traffic: crate::traffic::Traffic,
}

impl AppState {
    pub fn new(lifecycle: Lifecycle, metrics: Metrics, settings: Settings) -> Arc<Self> {
        Arc::new(AppState {
            catalog: ArcSwap::from_pointee(Catalog::default()),
            lifecycle: Mutex::new(lifecycle),
            settings,
            draining: AtomicBool::new(false),
            poke: Notify::new(),
            traffic: crate::traffic::Traffic::new(metrics.clone()),
            metrics,
        })
    }

    /// The current catalog; hold it for the whole request.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && (!self.settings.strict_readiness || self.catalog.load().all_ready())
    }

    /// Marks the server as going away: readiness turns false at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The first load at start-up. Returns the failures, by model.
    pub async fn load_all(self: &Arc<Self>) -> Result<Vec<(String, String)>, ApiError> {
        let mut lifecycle = self.lifecycle.lock().await;
        let current = self.catalog.load_full();
        let (next, outcome) = lifecycle.reconcile(&current, true, None).await;
        self.catalog.store(Arc::new(next));
        Ok(outcome.failed)
    }

    /// One pass of keeping the catalog in step with the sources.
    pub async fn reconcile(self: &Arc<Self>) {
        let mut lifecycle = self.lifecycle.lock().await;
        let current = self.catalog.load_full();
        let (next, outcome) = lifecycle.reconcile(&current, false, None).await;
        self.catalog.store(Arc::new(next));
        for (model, version) in outcome.loaded {
            info!(model, version, "Swapped in.");
        }
    }

    /// Sets a canary's share of its endpoint (the stable gets the rest), as one catalog swap.
    pub async fn set_canary_weight(self: &Arc<Self>, endpoint: &str, percent: f64) {
        let _lifecycle = self.lifecycle.lock().await;
        let current = self.catalog.load_full();
        let Some(existing) = current.routes.endpoints.get(endpoint) else {
            return;
        };
        let Some(policy) = existing.canary.clone() else {
            return;
        };
        let mut updated = (**existing).clone();
        crate::routing::set_canary_weight(&mut updated, &policy, percent);
        for variant in &updated.variants {
            self.metrics
                .set_route_weight(endpoint, &variant.name, variant.weight);
        }
        let mut routes = (*current.routes).clone();
        routes
            .endpoints
            .insert(endpoint.to_owned(), Arc::new(updated));
        let mut next = (*current).clone();
        next.routes = Arc::new(routes);
        self.catalog.store(Arc::new(next));
    }

    /// Asks the poller to look at the sources now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Polls the sources every `interval`, or sooner when poked; stops on `cancel`.
    pub async fn poll_sources(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
                _ = self.poke.notified() => {
                    // Debounce a burst of file events into one scan.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            debug!("Reconciling model sources.");
            self.reconcile().await;
        }
    }

    /// Loads (or reloads) one model from the sources and swaps it in.
    pub async fn load_model(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        self.check_model_control()?;
        if !valid_model_name(name) {
            return Err(ApiError::not_found(format!(
                "`{name}` is not a valid model name"
            )));
        }
        let mut lifecycle = self.lifecycle.lock().await;
        lifecycle.mark_wanted(name);
        let current = self.catalog.load_full();
        let (next, _) = lifecycle.reconcile(&current, false, Some(name)).await;
        let result = load_result(&next, name);
        self.catalog.store(Arc::new(next));
        result
    }

    /// Removes a model from the catalog. Requests already holding it finish.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        self.check_model_control()?;
        let mut lifecycle = self.lifecycle.lock().await;
        let current = self.catalog.load_full();
        let Some(entry) = current.models.get(name) else {
            return Err(ApiError::not_found(format!("model `{name}` is not loaded")));
        };
        for version in entry.versions.keys() {
            self.metrics
                .set_model_ready(name, &version.to_string(), false);
            self.metrics.forget_model(name, *version);
        }
        lifecycle.mark_unloaded(name);
        self.metrics.model_event(name, "unloaded");
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
}

/// Watches local repository folders and pokes the poller on changes
/// (create/modify/remove). The watcher lives as long as the returned guard.
pub fn watch_folders(
    state: &Arc<AppState>,
    folders: &[PathBuf],
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    if folders.is_empty() {
        return None;
    }
    let weak = Arc::downgrade(state);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) && let Some(state) = weak.upgrade()
        {
            state.poke();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(err) => {
            warn!(error = %err, "Cannot watch the model repository; relying on periodic scans.");
            return None;
        }
    };
    for folder in folders {
        if let Err(err) = watcher.watch(folder, RecursiveMode::Recursive) {
            warn!(folder = %folder.display(), error = %err, "Cannot watch a model folder; relying on periodic scans.");
        }
    }
    Some(watcher)
}
