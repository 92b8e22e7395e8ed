//! The request path: what happens to one decoded inference request, from the
//! catalog snapshot to its answer. `Serving` is the narrow handle the edges
//! call it through: the catalog store (read), the routed-traffic state, the
//! request limits and the metrics. Nothing here knows HTTP, gRPC or the
//! control plane.
//!
//! - `infer`: the transport-neutral request, its checks, the call into the model
//! - `route`: picking an endpoint's variant (pure)
//! - `catalog`: the swapped snapshot of what serves, and its store
//! - `model`: a loaded version (runtimes, warm-up, worker threads, breaker)
//! - `batcher`: the per-version queue and dynamic batcher
//! - `pipeline`: running pipelines and ensembles step by step, and checking them against the catalog
//! - `traffic`: per-variant outcome windows and shadow copies
//! - `agreement`: how a shadow's outputs compare with the stable answer
//! - `capture`: sampled request/response records and their sinks
//! - `classify`: the classification extension

pub mod agreement;
pub mod batcher;
pub mod capture;
pub mod catalog;
pub mod classify;
pub mod infer;
pub mod model;
pub mod pipeline;
pub mod route;
pub mod traffic;

use std::sync::Arc;

use crate::metrics::Metrics;
use catalog::CatalogStore;
use traffic::Traffic;

/// Bounds on what one request may carry, checked before any model work.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest element count of one input tensor.
    pub max_tensor_elements: usize,
    /// Longest single BYTES element.
    pub max_bytes_element: usize,
}

/// What the request path needs, and nothing more.
#[derive(Clone)]
pub struct Serving {
    pub catalog: Arc<CatalogStore>,
    pub traffic: Arc<Traffic>,
    pub limits: RequestLimits,
    pub metrics: Metrics,
    /// Payload capture's sinks; `None` when none is configured.
    pub capture: Option<Arc<capture::Capture>>,
}
