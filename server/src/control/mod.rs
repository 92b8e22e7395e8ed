//! The control plane: keeps what serves in step with the model sources
//! (`lifecycle`, `source`), model control over the API (load/unload), local
//! folder watching, and the rollout controller (`rollouts`, with its rules in
//! `canary` and fleet mode's reading of Prometheus in `fleet`). It writes the catalog through the store's writer lock and uses
//! the request path's types (`serve`) and the config layer; it never sees
//! HTTP or gRPC.
//!
//! `Control` is its handle: reconciles and control calls are serialized by
//! the lifecycle's lock (taken before the catalog's writer lock).

pub mod canary;
pub mod fleet;
pub mod lifecycle;
pub mod rollouts;
pub mod source;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::names::valid_model_name;
use crate::control::lifecycle::{Lifecycle, load_result};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::serve::catalog::CatalogStore;

pub struct Control {
    catalog: Arc<CatalogStore>,
    lifecycle: Mutex<Lifecycle>,
    metrics: Metrics,
    /// Whether load/unload are allowed over the API.
    model_control: bool,
    /// Wakes the repository poller early (a file changed, a webhook arrived).
    poke: Notify,
}

impl Control {
    pub fn new(
        lifecycle: Lifecycle,
        catalog: Arc<CatalogStore>,
        metrics: Metrics,
        model_control: bool,
    ) -> Arc<Self> {
        Arc::new(Control {
            catalog,
            lifecycle: Mutex::new(lifecycle),
            metrics,
            model_control,
            poke: Notify::new(),
        })
    }

    /// The first load at start-up. Returns the failures, by model.
    pub async fn load_all(self: &Arc<Self>) -> Result<Vec<(String, String)>, ApiError> {
        let mut lifecycle = self.lifecycle.lock().await;
        let writer = self.catalog.writer().await;
        let (next, outcome) = lifecycle.reconcile(&writer.current(), true, None).await;
        writer.publish(next);
        Ok(outcome.failed)
    }

    /// One pass of keeping the catalog in step with the sources.
    pub async fn reconcile(self: &Arc<Self>) {
        let mut lifecycle = self.lifecycle.lock().await;
        let writer = self.catalog.writer().await;
        let (next, outcome) = lifecycle.reconcile(&writer.current(), false, None).await;
        writer.publish(next);
        for (model, version) in outcome.loaded {
            info!(model, version, "Swapped in.");
        }
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
        let writer = self.catalog.writer().await;
        let (next, _) = lifecycle
            .reconcile(&writer.current(), false, Some(name))
            .await;
        let result = load_result(&next, name);
        writer.publish(next);
        result
    }

    /// Removes a model from the catalog. Requests already holding it finish.
    pub async fn unload_model(self: &Arc<Self>, name: &str) -> Result<(), ApiError> {
        self.check_model_control()?;
        let mut lifecycle = self.lifecycle.lock().await;
        let writer = self.catalog.writer().await;
        let current = writer.current();
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
        writer.publish(next);
        info!(model = name, "Model unloaded.");
        Ok(())
    }

    fn check_model_control(&self) -> Result<(), ApiError> {
        if self.model_control {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "model control is disabled; start the server with --enable-model-control to load or unload models",
            ))
        }
    }
}
